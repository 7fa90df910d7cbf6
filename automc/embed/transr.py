"""TransR (Lin et al., "Learning Entity and Relation Embeddings for Knowledge Graph Completion", AAAI 2015).

Eq. 2 of the AutoMC paper: ``W_r e_h + e_r ~ W_r e_t``, ``e_h, e_t`` in R^d, ``e_r`` in R^k, ``W_r`` in R^{k x d}.
``transr_score`` is the pure scoring function; ``TransRInteraction`` wraps it as a parameter-free module;
``TransR`` owns the tables and plugs into PyTorch Geometric's KGE harness (``KGEModel``: ``loader``, ``test``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.kge import KGEModel


def _clamp_norm(x: Tensor, maxnorm: float = 1.0) -> Tensor:
    """Scale rows whose L2 norm exceeds ``maxnorm`` back onto the ball (differentiable)."""
    norm = x.norm(p=2, dim=-1, keepdim=True)
    return x * (maxnorm / norm.clamp_min(maxnorm))


def transr_score(h: Tensor, r: Tensor, m_r: Tensor, t: Tensor, *, p: float = 2.0, clamp: bool = True) -> Tensor:
    """Plausibility ``-||M_r h + r - M_r t||_p`` (higher is more plausible).

    Shapes: ``h``, ``t``: ``(*batch, d)``; ``r``: ``(*batch, k)``; ``m_r``: ``(*batch, k, d)``; result ``(*batch,)``.
    Batch dimensions broadcast. With ``clamp`` the projected entities are kept inside the unit ball (the
    constraint ``||M_r e||_2 <= 1`` of the TransR paper, as a differentiable clamp).
    """
    h_p = torch.einsum("...kd,...d->...k", m_r, h)
    t_p = torch.einsum("...kd,...d->...k", m_r, t)
    if clamp:
        h_p, t_p = _clamp_norm(h_p), _clamp_norm(t_p)
    return -(h_p + r - t_p).norm(p=p, dim=-1)


class TransRInteraction(nn.Module):
    """Parameter-free TransR interaction: ``forward(h, (r, m_r), t)`` with the shapes of ``transr_score``."""

    def __init__(self, p: float = 2.0, clamp: bool = True) -> None:
        super().__init__()
        self.p, self.clamp = p, clamp

    def forward(self, h: Tensor, r: tuple[Tensor, Tensor], t: Tensor) -> Tensor:
        rel, m_r = r
        return transr_score(h, rel, m_r, t, p=self.p, clamp=self.clamp)


class TransR(KGEModel):
    """TransR as a PyG ``KGEModel``: entity table ``(n, d)``, relation table ``(R, k)``, projections ``(R, k, d)``.

    ``loss`` is the margin ranking loss of each triple against ``num_negatives`` corrupted triples (head or tail
    replaced by a uniformly drawn entity; with ``bernoulli`` the side is drawn per relation as in the TransR
    paper, so 1-to-N relations mostly corrupt the head). ``apply_constraints`` keeps entity and relation vectors in
    the unit ball; call it after each optimiser step. ``score_t`` / ``score_h`` score every entity at once (used
    by ``automc.embed.evaluate``).
    """

    def __init__(self, num_nodes: int, num_relations: int, hidden_channels: int = 32, *,
                 relation_dim: int | None = None, margin: float = 1.0, p_norm: float = 2.0, num_negatives: int = 1,
                 bernoulli: bool = True, sparse: bool = False) -> None:
        super().__init__(num_nodes, num_relations, hidden_channels, sparse)
        self.relation_dim = relation_dim or hidden_channels
        self.rel_emb = nn.Embedding(num_relations, self.relation_dim, sparse=sparse)
        self.rel_proj = nn.Parameter(torch.empty(num_relations, self.relation_dim, hidden_channels))
        self.interaction = TransRInteraction(p=p_norm)
        self.margin, self.p_norm, self.num_negatives, self.bernoulli = margin, p_norm, num_negatives, bernoulli
        self.register_buffer("head_corrupt_prob", torch.full((num_relations,), 0.5))
        self.generator: torch.Generator | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 6.0 / math.sqrt(self.hidden_channels)
        nn.init.uniform_(self.node_emb.weight, -bound, bound)
        nn.init.uniform_(self.rel_emb.weight, -bound, bound)
        with torch.no_grad():
            # start from the identity projection: TransR begins as TransE, as the TransR paper initialises it
            eye = torch.eye(self.relation_dim, self.hidden_channels)
            self.rel_proj.copy_(eye.expand_as(self.rel_proj))
        self.apply_constraints()

    # -- harness -------------------------------------------------------------------------------------------------
    def forward(self, head_index: Tensor, rel_type: Tensor, tail_index: Tensor) -> Tensor:
        """Scores of the triples (higher = more plausible); all arguments ``(batch,)`` long tensors.

        Same value as ``transr_score(h, r, M_r, t)``, computed without gathering one ``(k, d)`` matrix per triple:
        each entity is projected by every relation in one matrix product (there are few relations) and the
        triple's relation is picked from the result.
        """
        h_p = _clamp_norm(self._project(self.node_emb(head_index), rel_type))
        t_p = _clamp_norm(self._project(self.node_emb(tail_index), rel_type))
        return -(h_p + self.rel_emb(rel_type) - t_p).norm(p=self.p_norm, dim=-1)

    def _project(self, e: Tensor, rel_type: Tensor) -> Tensor:
        """``M_r e`` for each row: ``e`` ``(b, d)``, ``rel_type`` ``(b,)`` -> ``(b, k)``."""
        num_rel, k, d = self.rel_proj.shape
        every = (e @ self.rel_proj.permute(2, 0, 1).reshape(d, num_rel * k)).view(-1, num_rel, k)
        return every.gather(1, rel_type.view(-1, 1, 1).expand(-1, 1, k)).squeeze(1)

    def loss(self, head_index: Tensor, rel_type: Tensor, tail_index: Tensor) -> Tensor:
        pos = self(head_index, rel_type, tail_index)
        n = self.num_negatives
        h, r, t = (x.repeat(n) for x in (head_index, rel_type, tail_index))
        nh, nr, nt = self.corrupt(h, r, t)
        neg = self(nh, nr, nt).view(n, -1)
        return F.margin_ranking_loss(pos.expand_as(neg).reshape(-1), neg.reshape(-1),
                                     target=torch.ones_like(neg.reshape(-1)), margin=self.margin)

    @torch.no_grad()
    def corrupt(self, head_index: Tensor, rel_type: Tensor, tail_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Replace the head or the tail of each triple by a random entity (drawn from ``self.generator``)."""
        gen = self.generator
        size = head_index.shape
        rnd = torch.randint(self.num_nodes, size, generator=gen).to(head_index.device)
        coin = torch.rand(size, generator=gen).to(head_index.device)
        head_side = coin < self.head_corrupt_prob[rel_type]
        return torch.where(head_side, rnd, head_index), rel_type, torch.where(head_side, tail_index, rnd)

    def fit_bernoulli(self, head_index: Tensor, rel_type: Tensor, tail_index: Tensor) -> None:
        """Per-relation head-corruption probability ``tph / (tph + hpt)`` from the training triples."""
        if not self.bernoulli:
            return
        probs = torch.full((self.num_relations,), 0.5)
        for r in rel_type.unique().tolist():
            sel = rel_type == r
            h, t = head_index[sel], tail_index[sel]
            tph = sel.sum().item() / h.unique().numel()  # tails per head
            hpt = sel.sum().item() / t.unique().numel()  # heads per tail
            probs[r] = tph / (tph + hpt)
        self.head_corrupt_prob.copy_(probs)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Entity and relation vectors back into the unit L2 ball."""
        self.node_emb.weight.copy_(_clamp_norm(self.node_emb.weight))
        self.rel_emb.weight.copy_(_clamp_norm(self.rel_emb.weight))

    # -- scoring against every entity --------------------------------------------------------------------------
    def _score_all(self, fixed: Tensor, rel_type: Tensor, fixed_is_head: bool) -> Tensor:
        emb = self.node_emb.weight
        out = torch.empty(fixed.numel(), self.num_nodes, device=emb.device)
        for r in rel_type.unique().tolist():
            sel = rel_type == r
            m = self.rel_proj[r]
            all_p = _clamp_norm(emb @ m.T)  # (n, k)
            fix_p = _clamp_norm(emb[fixed[sel]] @ m.T)  # (s, k)
            vec = self.rel_emb.weight[r]
            query = fix_p + vec if fixed_is_head else fix_p - vec
            out[sel] = -torch.cdist(query, all_p, p=self.p_norm)
        return out

    @torch.no_grad()
    def score_t(self, head_index: Tensor, rel_type: Tensor) -> Tensor:
        """Scores ``(batch, num_nodes)`` of every entity as the tail of ``(h, r, ?)``."""
        return self._score_all(head_index, rel_type, fixed_is_head=True)

    @torch.no_grad()
    def score_h(self, rel_type: Tensor, tail_index: Tensor) -> Tensor:
        """Scores ``(batch, num_nodes)`` of every entity as the head of ``(?, r, t)``."""
        # ||h_p + r - t_p|| = ||t_p - r - h_p||: the query is t_p - r against every projected head
        return self._score_all(tail_index, rel_type, fixed_is_head=False)

    def __repr__(self) -> str:
        return (f"TransR({self.num_nodes}, num_relations={self.num_relations}, "
                f"hidden_channels={self.hidden_channels}, relation_dim={self.relation_dim})")
