"""NN_exp (eq. 3 of the AutoMC paper): predict a strategy's (AR, PR, FR) on a task from its embedding and the
task's features, so that published experience refines the strategy embeddings.

Experiences come from the store's ``experience-rows`` query. A strategy-level experience trains through its own
strategy (off-grid strategies too: they have R1/R2 triples, hence an embedding). A method-level experience (the
AutoMC paper's tables: the method alone reaching a target) trains through the mean embedding of the method's
strategies that match its known settings. AutoML baselines (level ``algorithm``) are not strategies and are skipped.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automc._num import finite
from automc.catalog import setting_id
from automc.embed.triples import TriplesFactory, entity_label, split_label
from automc.kb.store import Store

# Task features (the paper's seven, images counted per class) plus the parameter-reduction target of the run.
FEATURES = ("log_num_classes", "log_image_size", "image_channels", "log_images_per_class", "base_accuracy",
            "log_params", "log_flops", "target_pr")
TARGETS = ("ar", "pr", "fr")


def _log(x: Any) -> float:
    v = finite(x)
    return math.log(v) if v and v > 0 else math.nan


def task_feature_vector(row: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[float]:
    """The ``FEATURES`` of one experience row: log for counts, sizes, params and FLOPs; NaN where unknown
    (NN_exp imputes the training mean). The target is ``target_pr``, else the ``reduction_ratio`` the source
    reports, else the reached ``pr``.
    """
    settings = settings or {}
    nan = math.nan
    classes = finite(row.get("num_classes"))
    images = finite(row.get("num_images"))
    per_class = images / classes if images and classes else None
    target = finite(row.get("target_pr"))
    if target is None:
        target = finite(settings.get("reduction_ratio"))
    if target is None:
        target = finite(row.get("pr"))
    channels, accuracy = finite(row.get("image_channels")), finite(row.get("base_accuracy"))
    return [_log(classes), _log(row.get("image_size")), nan if channels is None else channels, _log(per_class),
            nan if accuracy is None else accuracy, _log(row.get("params")), _log(row.get("flops")),
            nan if target is None else target]


@dataclass(frozen=True)
class ExperienceSet:
    """Experiences as tensors: each has a bag of strategy entity ids, a feature row and (AR, PR, FR) targets."""

    ids: tuple[str, ...]
    methods: tuple[str, ...]
    levels: tuple[str, ...]
    bags: tuple[tuple[int, ...], ...]
    features: Tensor  # (n, len(FEATURES)) float, before standardisation; NaN where unknown
    targets: Tensor  # (n, 3) float, NaN where unknown
    weights: Tensor | None = None  # (n,) how much each counts in NN_exp's loss (its source's agreement); None: 1

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int]) -> ExperienceSet:
        idx = list(index)
        pick = torch.tensor(idx, dtype=torch.long)
        return ExperienceSet(tuple(self.ids[i] for i in idx), tuple(self.methods[i] for i in idx),
                             tuple(self.levels[i] for i in idx), tuple(self.bags[i] for i in idx),
                             self.features[pick], self.targets[pick],
                             None if self.weights is None else self.weights[pick])

    def bag_tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(flat entity ids, offsets)`` for ``F.embedding_bag``."""
        flat = [e for bag in self.bags for e in bag]
        offsets, pos = [], 0
        for bag in self.bags:
            offsets.append(pos)
            pos += len(bag)
        return (torch.tensor(flat, dtype=torch.long, device=device),
                torch.tensor(offsets, dtype=torch.long, device=device))

    @classmethod
    def empty(cls) -> ExperienceSet:
        return cls((), (), (), (), torch.zeros(0, len(FEATURES)), torch.zeros(0, len(TARGETS)))


def _strategy_index(factory: TriplesFactory) -> tuple[dict[str, list[int]], dict[int, set[int]], dict[str, set[str]]]:
    """From the triples: method -> its strategies' entity ids (R1); strategy entity id -> its setting entity ids
    (R2); method -> its hyperparameter names (R3)."""
    rel = factory.relation_to_id
    names = factory.id_to_entity
    by_method: dict[str, list[int]] = defaultdict(list)
    settings: dict[int, set[int]] = defaultdict(set)
    hps: dict[str, set[str]] = defaultdict(set)
    r1, r2, r3 = rel.get("HAS_METHOD"), rel.get("HAS_SETTING"), rel.get("HAS_HYPERPARAMETER")
    for h, r, t in factory.mapped_triples.tolist():
        if r == r1:
            by_method[split_label(names[t])[1]].append(h)
        elif r == r2:
            settings[h].add(t)
        elif r == r3:
            hps[split_label(names[h])[1]].add(split_label(names[t])[1])
    return by_method, settings, hps


def _setting_entity(hp: str, value: Any, factory: TriplesFactory) -> int | None:
    """Entity id of the setting ``hp=value``, trying the value as given and as int/float (JSON loses the type)."""
    candidates = [value]
    if isinstance(value, float) and value.is_integer():
        candidates.append(int(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        candidates.append(float(value))
    for v in candidates:
        eid = factory.entity_to_id.get(entity_label("HyperparameterSetting", setting_id(hp, v)))
        if eid is not None:
            return eid
    return None


def experience_set(rows: Sequence[Mapping[str, Any]], factory: TriplesFactory,
                   weights: Mapping[str, float] | None = None) -> tuple[ExperienceSet, dict]:
    """Turn ``experience-rows`` into an ``ExperienceSet`` over ``factory``'s entity ids, each weighted by
    ``weights[id]`` (1 where absent); also return counts of what was used and skipped (by reason)."""
    by_method, settings_of, hps_of = _strategy_index(factory)
    ids, methods, levels, bags, feats, targets = [], [], [], [], [], []
    info: dict[str, int] = defaultdict(int)
    for row in rows:
        level = row.get("level")
        if level not in ("strategy", "method"):
            info["skipped_not_a_method"] += 1
            continue
        ar, pr, fr = (finite(row.get(k)) for k in TARGETS)
        if ar is None and pr is None and fr is None:
            info["skipped_no_target"] += 1
            continue
        raw = row.get("settings")
        settings = json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})
        method = row.get("method") or ""
        bag: list[int] = []
        sid = row.get("strategy")
        if sid is not None:
            eid = factory.entity_to_id.get(entity_label("Strategy", sid))
            if eid is not None:
                bag = [eid]
        if not bag:
            candidates = by_method.get(method, [])
            known = [_setting_entity(hp, v, factory) for hp, v in settings.items() if hp in hps_of.get(method, ())]
            wanted = {e for e in known if e is not None}
            bag = [s for s in candidates if wanted <= settings_of.get(s, set())]
            if not bag and candidates:
                info["no_strategy_matches_settings"] += 1  # train through the whole method instead
                bag = list(candidates)
        if not bag:
            info["skipped_unknown_strategy"] += 1
            continue
        info[f"used_{level}"] += 1
        ids.append(str(row.get("id")))
        methods.append(method)
        levels.append(level)
        bags.append(tuple(sorted(bag)))
        feats.append(task_feature_vector(row, settings))
        targets.append([float("nan") if v is None else v for v in (ar, pr, fr)])
    if not ids:
        return ExperienceSet.empty(), dict(info)
    w = None if weights is None else torch.tensor([float(weights.get(i, 1.0)) for i in ids], dtype=torch.float32)
    return (ExperienceSet(tuple(ids), tuple(methods), tuple(levels), tuple(bags),
                          torch.tensor(feats, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), w),
            dict(info))


def store_experiences(store: Store, factory: TriplesFactory) -> tuple[ExperienceSet, dict]:
    """The store's experiences (``experience-rows`` joined with task features) over ``factory``'s ids."""
    return experience_set(store.named("experience-rows"), factory)


def _nan_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    known = ~torch.isnan(x)
    n = known.sum(0).clamp_min(1)
    mean = torch.where(known, x, torch.zeros_like(x)).sum(0) / n
    var = torch.where(known, (x - mean) ** 2, torch.zeros_like(x)).sum(0) / n
    std = var.sqrt()
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


class NNExp(nn.Module):
    """A small regularised MLP: strategy embedding (dropout) ⊕ standardised task features -> (AR, PR, FR).

    ``fit_scaling`` sets feature and target standardisation from training experiences (kept as buffers);
    ``forward`` works in standardised target units (for the loss), ``predict`` in real units.
    """

    def __init__(self, embedding_dim: int, feature_dim: int = len(FEATURES), *, hidden: int = 16,
                 dropout: float = 0.3, outputs: int = len(TARGETS)) -> None:
        super().__init__()
        self.embedding_dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(embedding_dim + feature_dim, hidden), nn.Tanh(), nn.Dropout(dropout),
                                 nn.Linear(hidden, outputs))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("target_mean", torch.zeros(outputs))
        self.register_buffer("target_std", torch.ones(outputs))

    def fit_scaling(self, experiences: ExperienceSet) -> None:
        fm, fs = _nan_stats(experiences.features)
        tm, ts = _nan_stats(experiences.targets)
        for name, v in (("feature_mean", fm), ("feature_std", fs), ("target_mean", tm), ("target_std", ts)):
            getattr(self, name).copy_(v)

    def forward(self, strategy_embedding: Tensor, features: Tensor) -> Tensor:
        """``(n, d)`` embeddings and ``(n, f)`` raw features -> ``(n, 3)`` standardised predictions."""
        x = torch.nan_to_num((features - self.feature_mean) / self.feature_std)  # unknown -> training mean
        return self.mlp(torch.cat([self.embedding_dropout(strategy_embedding), x], dim=-1))

    @torch.no_grad()
    def predict(self, strategy_embedding: Tensor, features: Tensor) -> Tensor:
        """Predictions ``(n, 3)`` in real units (AR, PR, FR as fractions)."""
        was = self.training
        self.eval()
        try:
            return self(strategy_embedding, features) * self.target_std + self.target_mean
        finally:
            self.train(was)

    def loss(self, strategy_embedding: Tensor, features: Tensor, targets: Tensor,
             weights: Sequence[float] = (1.0, 1.0, 0.5), row_weights: Tensor | None = None) -> Tensor:
        """Masked Huber loss in standardised units: unknown targets (NaN) do not count; ``row_weights`` (n,)
        scale each experience (a source that disagrees with measured results counts less)."""
        pred = self(strategy_embedding, features)
        y = (targets - self.target_mean) / self.target_std
        known = ~torch.isnan(y)
        w = torch.tensor(weights, device=pred.device, dtype=pred.dtype).expand_as(pred) * known
        if row_weights is not None:
            w = w * row_weights.to(pred.device, pred.dtype)[:, None]
        err = F.smooth_l1_loss(pred, torch.nan_to_num(y), reduction="none", beta=0.5)
        return (err * w).sum() / w.sum().clamp_min(1e-8)


def pool_strategies(entity_embedding: Tensor, experiences: ExperienceSet, device: torch.device | str = "cpu", *,
                    bags: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Each experience's strategy embedding ``(n, d)``: the mean over its bag (differentiable); ``bags`` are
    precomputed ``experiences.bag_tensors(device)``."""
    flat, offsets = bags if bags is not None else experiences.bag_tensors(device)
    return F.embedding_bag(flat, entity_embedding, offsets, mode="mean")
