"""Small frozen records the store reads and writes, and the batch of graph changes written in one transaction."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from automc.kb.schema import NODE, REL


def content_id(*parts: Any, n: int = 16) -> str:
    """A stable id from JSON-serialisable content."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class TaskFeatures:
    """A compression task as the knowledge graph sees it: dataset features and base-model features."""

    model: str
    dataset: str
    num_classes: int
    image_size: int
    image_channels: int
    num_images: int
    base_accuracy: float  # top-1 in [0, 1]
    params: float  # parameters of the base model
    flops: float  # FLOPs of the base model (None-free; 0 when unknown)

    @functools.cached_property
    def id(self) -> str:
        return f"{self.model}/{self.dataset}#{content_id(*self.values(), n=8)}"

    def values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def vector(self) -> list[float]:
        """Raw numeric features in a fixed order (normalise before learning)."""
        return [float(self.num_classes), float(self.image_size), float(self.image_channels),
                float(self.num_images) / max(1, self.num_classes), float(self.base_accuracy),
                float(self.params), float(self.flops)]


@dataclass
class GraphBatch:
    """Nodes (label -> key -> properties) and relationships to upsert together, in one transaction."""

    nodes: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)
    rels: dict[str, dict[tuple, dict[str, Any]]] = field(default_factory=dict)

    def node(self, label: str, **props: Any) -> Any:
        key = props[NODE[label].key]
        self.nodes.setdefault(label, {}).setdefault(key, {}).update(props)
        return key

    def rel(self, name: str, src: Any, dst: Any, **props: Any) -> None:
        rk = REL[name].key
        ident = (src, dst, props.get(rk)) if rk else (src, dst)
        self.rels.setdefault(name, {})[ident] = {"src": src, "dst": dst, **props}

    def task(self, t: TaskFeatures) -> str:
        if t.id in self.nodes.get("Task", {}):
            return t.id
        self.node("Model", name=t.model)
        self.node("Dataset", name=t.dataset, num_classes=t.num_classes, image_size=t.image_size,
                  image_channels=t.image_channels)
        key = self.node("Task", id=t.id, **dict(zip(t.__dataclass_fields__, t.values(), strict=True)))
        self.rel("OF_MODEL", key, t.model)
        self.rel("ON_DATASET", key, t.dataset)
        return key

    def __len__(self) -> int:
        return sum(map(len, self.nodes.values())) + sum(map(len, self.rels.values()))


@dataclass(frozen=True)
class RunRecord:
    """A ``SearchRun`` as stored; ``config``, ``front`` and ``strategy_state`` decoded from JSON."""

    id: str
    algorithm: str
    state: str  # a ``State``
    task: str
    seed: int
    target_pr: float
    budget: int
    config: dict[str, Any] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    round: int = -1  # the last round whose strategy state was stored; -1 before the first
    seconds: float = 0.0
    fingerprint: str = ""
    started: str = ""
    finished: str | None = None
    host: str = ""
    pid: int | None = None
    heartbeat: str = ""
    error: str = ""
