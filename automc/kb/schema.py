"""The knowledge-graph schema, declared once and rendered for every backend.

The paper's five entity types (E1-E5) and five relation types (R1-R5), plus what the search needs: tasks,
models, datasets, experiences, schemes, evaluations, search runs and embedding runs.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 5

# Property types, in LadybugDB's spelling; Neo4j is schemaless for properties and only gets key constraints.
STRING, DOUBLE, INT64, BOOLEAN, DOUBLE_LIST = "STRING", "DOUBLE", "INT64", "BOOLEAN", "DOUBLE[]"


@dataclass(frozen=True)
class NodeType:
    label: str
    key: str
    properties: tuple[tuple[str, str], ...]  # (name, type), key first
    paper: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.properties)

    def type_of(self, name: str) -> str:
        return dict(self.properties)[name]


@dataclass(frozen=True)
class RelType:
    name: str
    src: str
    dst: str
    properties: tuple[tuple[str, str], ...] = ()
    paper: str = ""
    # relationships with a key property may repeat between the same two nodes (a scheme using a strategy twice)
    key: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.properties)


def _props(*pairs: str) -> tuple[tuple[str, str], ...]:
    out = []
    for p in pairs:
        name, _, typ = p.partition(":")
        out.append((name, typ or STRING))
    return tuple(out)


_TASK_FEATURES = ("num_classes:INT64", "image_size:INT64", "image_channels:INT64", "num_images:INT64",
                  "base_accuracy:DOUBLE", "params:DOUBLE", "flops:DOUBLE")

NODES: tuple[NodeType, ...] = (
    NodeType("Strategy", "id", _props("id", "method", "settings", "in_catalog:BOOLEAN", "embedding:DOUBLE[]"),
             paper="E1"),
    NodeType("Method", "name", _props("name", "title", "reference", "embedding:DOUBLE[]"), paper="E2"),
    NodeType("Hyperparameter", "name", _props("name", "description", "type", "domain", "embedding:DOUBLE[]"),
             paper="E3"),
    NodeType("HyperparameterSetting", "id",
             _props("id", "hyperparameter", "value", "in_catalog:BOOLEAN", "embedding:DOUBLE[]"), paper="E4"),
    NodeType("Technique", "name", _props("name", "description", "embedding:DOUBLE[]"), paper="E5"),
    NodeType("Model", "name", _props("name")),
    NodeType("Dataset", "name", _props("name", "num_classes:INT64", "image_size:INT64", "image_channels:INT64")),
    NodeType("Task", "id", _props("id", "model", "dataset", *_TASK_FEATURES)),
    NodeType("Experience", "id", _props(
        "id", "source", "level", "algorithm", "settings", "target_pr:DOUBLE", "ar:DOUBLE", "pr:DOUBLE",
        "fr:DOUBLE", "accuracy:DOUBLE", "params:DOUBLE", "flops:DOUBLE")),
    NodeType("Scheme", "id", _props("id", "text", "length:INT64")),
    NodeType("Evaluation", "id", _props(
        "id", "state", "search_run", "target_pr:DOUBLE", "params:DOUBLE", "flops:DOUBLE", "accuracy:DOUBLE",
        "accuracy_low:DOUBLE", "accuracy_high:DOUBLE", "val_accuracy:DOUBLE", "ar:DOUBLE", "pr:DOUBLE",
        "fr:DOUBLE", "seconds:DOUBLE", "device", "steps", "error", "created", "finished",
        # v2: who runs it (stale detection), the search's view of it, and the step it adds to its parent
        "host", "pid:INT64", "heartbeat", "fidelity", "round:INT64", "parent", "val_accuracy_low:DOUBLE",
        "val_accuracy_high:DOUBLE", "step_ar:DOUBLE", "step_pr:DOUBLE", "epochs:DOUBLE", "data_fraction:DOUBLE",
        "seed:INT64", "val_source", "train_seconds:DOUBLE",
        # v3: its index in its search run's order (search steps and final fine-tunes alike); states are ``State``s
        "step:INT64",
        # v4: a final model's per-image test correctness (``compress.paired``: packed bits) and its test images' hash
        "test_correct_bits", "test_ids_hash",
        # v5: training compute in epoch-equivalents of the training split (``compress.compute``), the strategy's
        # prediction for the step (JSON, e.g. F_mo's predicted accuracy change) and a search step's rung
        "compute:DOUBLE", "prediction", "rung:INT64")),
    NodeType("SearchRun", "id", _props(
        "id", "algorithm", "config", "state", "started", "finished",
        # v2: what resume and reports need
        "task", "seed:INT64", "target_pr:DOUBLE", "budget:INT64", "front", "strategy_state", "round:INT64",
        "seconds:DOUBLE", "fingerprint", "host", "pid:INT64", "heartbeat", "error")),
    NodeType("EmbeddingRun", "id", _props("id", "created", "kb_version", "config", "metrics")),
    NodeType("Meta", "key", _props("key", "value")),
)

RELS: tuple[RelType, ...] = (
    RelType("HAS_METHOD", "Strategy", "Method", paper="R1"),
    RelType("HAS_SETTING", "Strategy", "HyperparameterSetting", paper="R2"),
    RelType("HAS_HYPERPARAMETER", "Method", "Hyperparameter", paper="R3"),
    RelType("USES_TECHNIQUE", "Method", "Technique", paper="R4"),
    RelType("HAS_VALUE", "Hyperparameter", "HyperparameterSetting", paper="R5"),
    RelType("OF_MODEL", "Task", "Model"),
    RelType("ON_DATASET", "Task", "Dataset"),
    RelType("EXP_ON_TASK", "Experience", "Task"),
    RelType("EXP_OF_METHOD", "Experience", "Method"),
    RelType("EXP_OF_STRATEGY", "Experience", "Strategy"),
    RelType("EXP_WITH_SETTING", "Experience", "HyperparameterSetting"),
    RelType("STEP", "Scheme", "Strategy", _props("position:INT64"), key="position"),
    RelType("EVAL_OF_SCHEME", "Evaluation", "Scheme"),
    RelType("EVAL_ON_TASK", "Evaluation", "Task"),
    RelType("EVAL_IN_RUN", "Evaluation", "SearchRun"),
    RelType("EXTENDS", "Scheme", "Scheme"),  # a scheme and its prefix one step shorter
    RelType("RUN_ON_TASK", "SearchRun", "Task"),
)

NODE = {n.label: n for n in NODES}
REL = {r.name: r for r in RELS}
# The knowledge-graph relations TransR learns from, in the paper's order R1..R5.
KG_RELATIONS = tuple(r.name for r in RELS if r.paper)


def ladybug_ddl() -> list[str]:
    """``CREATE ... TABLE`` statements for LadybugDB (labels and types are schema constants, not user input)."""
    out = []
    for n in NODES:
        cols = ", ".join(f"{name} {typ}" for name, typ in n.properties)
        out.append(f"CREATE NODE TABLE IF NOT EXISTS {n.label}({cols}, PRIMARY KEY ({n.key}))")
    for r in RELS:
        cols = "".join(f", {name} {typ}" for name, typ in r.properties)
        out.append(f"CREATE REL TABLE IF NOT EXISTS {r.name}(FROM {r.src} TO {r.dst}{cols})")
    return out


def neo4j_ddl() -> list[str]:
    """Uniqueness constraints (which also index the keys) for Neo4j 5."""
    return [f"CREATE CONSTRAINT automc_{n.label.lower()}_{n.key} IF NOT EXISTS "
            f"FOR (n:{n.label}) REQUIRE n.{n.key} IS UNIQUE" for n in NODES]
