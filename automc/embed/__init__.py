"""Strategy embeddings (AutoMC Algorithm 1): TransR on the knowledge graph, refined by NN_exp on experience.

Names load on first use (PEP 562): the submodules import torch and torch-geometric, which the CLI must not pay
for at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    **dict.fromkeys(["LinkPredictionResult", "RankMetrics", "evaluate_link_prediction", "rank_triples"], "evaluate"),
    **dict.fromkeys(["FEATURES", "TARGETS", "ExperienceSet", "NNExp", "experience_set", "store_experiences"],
                    "experience"),
    **dict.fromkeys(["MODELS", "EmbedConfig", "EmbedResult", "Trained", "fit", "train", "write_embeddings"], "train"),
    **dict.fromkeys(["TransR", "TransRInteraction", "transr_score"], "transr"),
    **dict.fromkeys(["TriplesFactory", "entity_label", "labeled_kg_triples"], "triples"),
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
