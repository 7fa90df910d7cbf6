"""Algorithm 1 of the AutoMC paper: alternate one epoch of knowledge-graph embedding (TransR) with NN_exp
refinement of the strategy embeddings on published experience; ``fit`` runs it on a store and writes back.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.kge import KGEModel, RotatE, TransE

from automc.embed.experience import FEATURES, TARGETS, ExperienceSet, NNExp, experience_set, pool_strategies
from automc.embed.transr import TransR
from automc.embed.triples import TriplesFactory, split_label
from automc.errors import ValidationError
from automc.kb.schema import NODE
from automc.kb.store import Store, content_fingerprint

# Node labels that carry an ``embedding`` property (E1-E5).
EMBEDDED_LABELS = tuple(n.label for n in NODE.values() if "embedding" in n.names)

Progress = Callable[[int, int, Mapping[str, float]], None]


def _transr(n: int, r: int, c: EmbedConfig) -> KGEModel:
    return TransR(n, r, c.dim, relation_dim=c.relation_dim, margin=c.margin, num_negatives=c.num_negatives)


MODELS: dict[str, Callable[[int, int, EmbedConfig], KGEModel]] = {
    "transr": _transr,
    "transe": lambda n, r, c: TransE(n, r, c.dim, margin=c.margin),
    "rotate": lambda n, r, c: RotatE(n, r, c.dim, margin=c.margin),
}


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of one embedding training (Algorithm 1)."""

    model: str = "transr"  # one of MODELS
    dim: int = 32  # entity dimension d
    relation_dim: int = 32  # relation dimension k (TransR)
    epochs: int = 40
    batch_size: int = 4096
    lr: float = 0.01
    margin: float = 1.0
    num_negatives: int = 1
    use_experience: bool = True  # NN_exp refinement (Algorithm 1, lines 6-9)
    exp_steps: int = 10  # NN_exp optimiser steps after each KG epoch
    exp_lr: float = 0.01
    exp_embedding_lr: float = 1e-4  # how far NN_exp moves the strategy embeddings (0: frozen); see the bench
    exp_hidden: int = 16
    exp_dropout: float = 0.3
    exp_weight_decay: float = 1e-2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads while training (None: leave torch's setting). One is as fast for these small matrices
    # and does not collapse when other jobs share the cores (bench/results/embed_bench.md).
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValidationError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}", field="model")
        for name in ("dim", "relation_dim", "batch_size", "num_negatives"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be >= 1", field=name)
        if self.epochs < 0 or self.exp_steps < 0:
            raise ValidationError("epochs and exp_steps must be >= 0", field="epochs")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def entity_matrix(model: nn.Module) -> Tensor:
    """The ``(num_entities, D)`` entity representation (RotatE: real and imaginary parts side by side)."""
    if hasattr(model, "node_emb_im"):
        return torch.cat([model.node_emb.weight, model.node_emb_im.weight], dim=1)
    return model.node_emb.weight


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Seed torch's global RNG (PyG's samplers, dropout, inits use it) and set the thread count, restoring both."""
    devices = [device.index or 0] if device.type == "cuda" else []
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@dataclass
class Trained:
    """A trained KGE model and NN_exp with the per-epoch history."""

    model: KGEModel
    nn_exp: NNExp | None
    history: list[dict[str, float]]
    seconds: float
    device: str

    def entity_embeddings(self) -> Tensor:
        return entity_matrix(self.model).detach().cpu()

    @torch.no_grad()
    def predict(self, experiences: ExperienceSet) -> Tensor:
        """NN_exp's (AR, PR, FR) for each experience ``(n, 3)``; raises ``ValidationError`` without NN_exp."""
        if self.nn_exp is None:
            raise ValidationError("this training used no experience, so there is no NN_exp to predict with")
        dev = next(self.nn_exp.parameters()).device
        pooled = pool_strategies(entity_matrix(self.model), experiences, dev)
        return self.nn_exp.predict(pooled, experiences.features.to(dev)).cpu()


def train(factory: TriplesFactory, experiences: ExperienceSet | None = None, config: EmbedConfig | None = None,
          *, progress: Progress | None = None) -> Trained:
    """Algorithm 1: per epoch, one pass of KGE training over ``factory``'s triples, then ``exp_steps`` NN_exp
    steps whose gradients flow into the entity embeddings (strategies, through each experience's bag)."""
    config = config or EmbedConfig()
    device = resolve_device(config.device)
    use_exp = bool(config.use_experience and experiences is not None and len(experiences))
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    with _seeded(config.seed, device, config.threads):
        model = MODELS[config.model](factory.num_entities, factory.num_relations, config).to(device)
        h, r, t = (factory.mapped_triples[:, i].contiguous() for i in range(3))
        if isinstance(model, TransR):
            model.generator = torch.Generator().manual_seed(config.seed)
            model.fit_bernoulli(h, r, t)
        h, r, t = h.to(device), r.to(device), t.to(device)
        loader = model.loader(h, r, t, batch_size=config.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(config.seed)) if h.numel() else None
        kg_opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        nn_exp = exp_opt = None
        if use_exp:
            assert experiences is not None
            emb = entity_matrix(model)
            nn_exp = NNExp(emb.shape[1], hidden=config.exp_hidden, dropout=config.exp_dropout).to(device)
            nn_exp.fit_scaling(experiences)
            exp_opt = torch.optim.AdamW([
                {"params": list(nn_exp.parameters()), "weight_decay": config.exp_weight_decay, "lr": config.exp_lr},
                {"params": [p for n, p in model.named_parameters() if n.startswith("node_emb")],
                 "weight_decay": 0.0, "lr": config.exp_embedding_lr},
            ])
            feats, targets = experiences.features.to(device), experiences.targets.to(device)
            row_weights = None if experiences.weights is None else experiences.weights.to(device)
            bags = experiences.bag_tensors(device)
        for epoch in range(config.epochs):
            model.train()
            total, batches = 0.0, 0
            if loader is not None:  # no triples: only NN_exp trains the (random) embeddings
                for bh, br, bt in loader:
                    kg_opt.zero_grad()
                    loss = model.loss(bh, br, bt)
                    loss.backward()
                    kg_opt.step()
                    if hasattr(model, "apply_constraints"):
                        model.apply_constraints()
                    total += float(loss.detach())
                    batches += 1
            row = {"epoch": epoch + 1, "kg_loss": total / max(1, batches)}
            if nn_exp is not None and exp_opt is not None:
                nn_exp.train()
                exp_loss = 0.0
                for _ in range(config.exp_steps):
                    exp_opt.zero_grad()
                    pooled = pool_strategies(entity_matrix(model), experiences, device, bags=bags)
                    loss = nn_exp.loss(pooled, feats, targets, row_weights=row_weights)
                    loss.backward()
                    exp_opt.step()
                    if hasattr(model, "apply_constraints"):
                        model.apply_constraints()
                    exp_loss = float(loss.detach())
                row["exp_loss"] = exp_loss
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            if progress is not None:
                progress(epoch + 1, config.epochs, row)
    model.eval()
    if nn_exp is not None:
        nn_exp.eval()
    return Trained(model, nn_exp, history, time.perf_counter() - start, str(device))


@dataclass
class EmbedResult:
    """Embeddings of every knowledge-graph entity and relation, with the settings and the KB version used."""

    config: EmbedConfig
    entity_labels: list[str]  # "Label:key", in id order
    entity_embeddings: Tensor  # (num_entities, D), CPU
    relation_labels: list[str]
    relation_embeddings: Tensor  # (num_relations, k), CPU
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    kb_version: str = ""
    run_id: str | None = None
    trained: Trained | None = field(default=None, repr=False, compare=False)

    def embeddings(self, node_label: str = "Strategy") -> dict[str, list[float]]:
        """Key -> vector for the entities of one node label."""
        out = {}
        for i, lab in enumerate(self.entity_labels):
            node, key = split_label(lab)
            if node == node_label:
                out[key] = self.entity_embeddings[i].tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Config, KB version, run id, metrics and history (no vectors: see ``save``)."""
        return {"config": self.config.to_dict(), "kb_version": self.kb_version, "run_id": self.run_id,
                "metrics": self.metrics, "history": self.history,
                "num_entities": len(self.entity_labels), "dim": int(self.entity_embeddings.shape[1])}

    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` and ``embeddings.npz`` (entity/relation labels and vectors) into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        np.savez(out / "embeddings.npz", entity_labels=np.array(self.entity_labels, dtype=str),
                 entity_embeddings=self.entity_embeddings.numpy(),
                 relation_labels=np.array(self.relation_labels, dtype=str),
                 relation_embeddings=self.relation_embeddings.numpy())
        return out


def _relation_matrix(model: nn.Module) -> Tensor:
    return model.rel_emb.weight.detach().cpu()


def fit(store: Store, config: EmbedConfig | None = None, *, progress: Progress | None = None,
        write: bool = True) -> EmbedResult:
    """Train embeddings on the store's R1-R5 triples and experiences; with ``write``, store them on the E1-E5
    nodes (property ``embedding``) with an EmbeddingRun recording the KB version, config and metrics."""
    from automc.embed.agreement import experience_weights

    config = config or EmbedConfig()
    # Read once: the KB version fingerprints exactly the triples and experiences trained on.
    triples, rows = store.kg_triples(), store.named("experience-rows")
    kb_version = content_fingerprint(triples, rows)
    factory = TriplesFactory.from_kg_triples(triples)
    if not len(factory):
        raise ValidationError(f"store {store.uri} has no R1-R5 triples: run 'automc kb init' first")
    by_id, by_source = experience_weights(store) if config.use_experience else ({}, {})
    experiences, info = experience_set(rows, factory, by_id) if config.use_experience else (None, {})
    trained = train(factory, experiences, config, progress=progress)
    last = trained.history[-1] if trained.history else {}
    metrics: dict[str, Any] = {
        "kg_loss": last.get("kg_loss"), "exp_loss": last.get("exp_loss"), "seconds": round(trained.seconds, 3),
        "device": trained.device, "num_triples": len(factory), "num_entities": factory.num_entities,
        "num_relations": factory.num_relations, "num_experiences": len(experiences) if experiences else 0,
        "experiences": info, "features": list(FEATURES), "targets": list(TARGETS),
        "source_weights": by_source,  # published experience counts by its agreement with measured results
    }
    result = EmbedResult(config, factory.id_to_entity, trained.entity_embeddings(),
                         sorted(factory.relation_to_id, key=factory.relation_to_id.get),
                         _relation_matrix(trained.model), trained.history, metrics, kb_version, None, trained)
    if write:
        result.run_id = write_embeddings(store, result)
    return result


def write_embeddings(store: Store, result: EmbedResult) -> str:
    """Store every labelled entity's vector and one EmbeddingRun; returns the run id."""
    import uuid

    run = {"id": result.run_id or uuid.uuid4().hex[:16], "kb_version": result.kb_version,
           "config": result.config.to_dict(), "metrics": result.metrics}
    with store.transaction():
        for label in EMBEDDED_LABELS:
            vectors = result.embeddings(label)
            if vectors:
                store.set_embeddings(label, vectors, run)
    return run["id"]
