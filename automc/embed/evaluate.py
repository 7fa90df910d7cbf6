"""Filtered link-prediction evaluation (MRR, Hits@k) for any PyG ``KGEModel``.

PyG's ``KGEModel.test`` ranks raw (other true answers count against the model) and only tails; here every other
known true answer is filtered out and both sides are ranked. Ties count half (the "realistic" rank). Models with
``score_t(h, r)`` / ``score_h(r, t)`` (our ``TransR``) are scored against all entities in one call; any other
``KGEModel`` is scored through ``forward`` on expanded index tensors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class RankMetrics:
    """Rank-based metrics of one side (``head``, ``tail``) or of both together."""

    mrr: float
    mean_rank: float
    hits: dict[int, float]
    count: int

    @property
    def hits_at_10(self) -> float:
        return self.hits.get(10, float("nan"))

    @classmethod
    def from_ranks(cls, ranks: Tensor, ks: Sequence[int]) -> RankMetrics:
        ranks = ranks.double()
        if ranks.numel() == 0:
            return cls(float("nan"), float("nan"), {k: float("nan") for k in ks}, 0)
        return cls(float((1.0 / ranks).mean()), float(ranks.mean()),
                   {k: float((ranks <= k).double().mean()) for k in ks}, int(ranks.numel()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hits"] = {f"hits@{k}": v for k, v in self.hits.items()}
        return d


@dataclass(frozen=True)
class LinkPredictionResult:
    """Filtered link-prediction metrics: both sides together, and per side."""

    both: RankMetrics
    sides: dict[str, RankMetrics] = field(default_factory=dict)
    num_entities: int = 0

    @property
    def mrr(self) -> float:
        return self.both.mrr

    @property
    def hits_at_10(self) -> float:
        return self.both.hits_at_10

    def to_dict(self) -> dict:
        return {"mrr": self.both.mrr, "hits@10": self.both.hits_at_10, "num_entities": self.num_entities,
                "both": self.both.to_dict(), **{s: m.to_dict() for s, m in self.sides.items()}}


def _answers(triples: Iterable[Tensor]) -> tuple[dict[tuple[int, int], list[int]], dict[tuple[int, int], list[int]]]:
    tails: dict[tuple[int, int], list[int]] = defaultdict(list)
    heads: dict[tuple[int, int], list[int]] = defaultdict(list)
    for part in triples:
        for h, r, t in part.tolist():
            tails[(h, r)].append(t)
            heads[(r, t)].append(h)
    return tails, heads


def _scores(model: torch.nn.Module, fixed: Tensor, rel: Tensor, side: str, num_entities: int) -> Tensor:
    if side == "tail" and hasattr(model, "score_t"):
        return model.score_t(fixed, rel)
    if side == "head" and hasattr(model, "score_h"):
        return model.score_h(rel, fixed)
    b = fixed.numel()
    cand = torch.arange(num_entities, device=fixed.device).repeat(b)
    fix = fixed.repeat_interleave(num_entities)
    rr = rel.repeat_interleave(num_entities)
    out = model(fix, rr, cand) if side == "tail" else model(cand, rr, fix)
    return out.view(b, num_entities)


@torch.no_grad()
def rank_triples(model: torch.nn.Module, triples: Tensor, *, num_entities: int, filter_triples: Sequence[Tensor] = (),
                 side: str = "tail", batch_size: int = 64) -> Tensor:
    """Filtered realistic rank (1 = best) of the true ``side`` entity of each triple ``(n, 3)``."""
    tails, heads = _answers(filter_triples)
    device = next(model.parameters()).device
    ranks = []
    for start in range(0, triples.shape[0], batch_size):
        batch = triples[start:start + batch_size].to(device)
        h, r, t = batch[:, 0], batch[:, 1], batch[:, 2]
        fixed, true = (h, t) if side == "tail" else (t, h)
        scores = _scores(model, fixed, r, side, num_entities).float()
        true_score = scores.gather(1, true.view(-1, 1))
        rows, cols = [], []
        for i, (hh, rr, tt) in enumerate(batch.tolist()):
            others = tails.get((hh, rr), ()) if side == "tail" else heads.get((rr, tt), ())
            own = tt if side == "tail" else hh
            for o in others:
                if o != own:
                    rows.append(i)
                    cols.append(o)
        if rows:
            scores[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = float("-inf")
        better = (scores > true_score).sum(1)
        ties = (scores == true_score).sum(1) - 1  # the true entity itself
        ranks.append((1 + better + 0.5 * ties).cpu())
    return torch.cat(ranks) if ranks else torch.empty(0)


def evaluate_link_prediction(model: torch.nn.Module, triples: Tensor, *, num_entities: int,
                             filter_triples: Sequence[Tensor] = (), ks: Sequence[int] = (1, 3, 10),
                             sides: Sequence[str] = ("head", "tail"), batch_size: int = 64) -> LinkPredictionResult:
    """Filtered MRR / mean rank / Hits@k of ``triples`` ``(n, 3)``; ``filter_triples`` are all known true triples
    (train, validation and test), the test triples among them."""
    was_training = model.training
    model.eval()
    try:
        per_side = {s: rank_triples(model, triples, num_entities=num_entities, filter_triples=filter_triples,
                                    side=s, batch_size=batch_size) for s in sides}
    finally:
        model.train(was_training)
    both = torch.cat(list(per_side.values()))
    return LinkPredictionResult(RankMetrics.from_ranks(both, ks),
                                {s: RankMetrics.from_ranks(v, ks) for s, v in per_side.items()}, num_entities)
