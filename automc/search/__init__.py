"""Search: strategies (progressive, baselines), F_mo, Pareto fronts, the search loop and its reports.

``STRATEGIES`` maps a strategy name to its class; each class is imported when it is first looked up, so
``import automc.search`` (which the CLI does at start-up) stays free of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automc.search._base import SearchStrategy
    from automc.search.config import SearchConfig
    from automc.search.study import SearchEvent, SearchInterrupted, SearchResult, search

__all__ = ["STRATEGIES", "SearchConfig", "SearchEvent", "SearchInterrupted", "SearchResult", "search"]

# name -> "module:Class", declared once.
_STRATEGY_PATHS: dict[str, str] = {
    "progressive": "automc.search.progressive:ProgressiveStrategy",
    "random": "automc.search.random:RandomStrategy",
    "evolution": "automc.search.evolution:EvolutionStrategy",
    "tpe": "automc.search.tpe:TPEStrategy",
    "rl": "automc.search.rl:RLStrategy",
    "amc": "automc.search.amc:AMCStrategy",
    "seernet": "automc.search.seernet:SeerNetStrategy",
}


class _Registry(Mapping[str, "type[SearchStrategy]"]):
    """Strategy classes by name, imported on first lookup."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, type[SearchStrategy]] = {}

    def __getitem__(self, name: str) -> type[SearchStrategy]:
        if name not in self._loaded:
            module, _, attr = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


STRATEGIES = _Registry(_STRATEGY_PATHS)

_STUDY_NAMES = ("SearchEvent", "SearchInterrupted", "SearchResult", "search")


def __getattr__(name: str) -> Any:
    if name == "SearchConfig":
        from automc.search.config import SearchConfig

        return SearchConfig
    if name in _STUDY_NAMES:
        from automc.search import study

        return getattr(study, name)
    raise AttributeError(f"module 'automc.search' has no attribute {name!r}")
