"""The search space as data: the catalogue's grid strategies and the ``[search]`` rules of ``catalog.toml``.

A scheme (``SchemeKey``) is a tuple of strategy ids. It is allowed when it has at most ``max_length`` steps,
every step is a grid strategy, the sum of its strategies' ``*_epochs_factor`` values stays within
``max_epochs_factor_sum``, an ``only_first`` method only starts it, nothing follows an ``only_last`` method,
and no method B comes anywhere after a method listed in ``not_after[B]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from automc.catalog import Catalog, Scheme, SearchRules, Strategy, load_catalog
from automc.errors import NotFoundError
from automc.search._base import SchemeKey

_EPS = 1e-9  # epochs factors are decimal grid values: tolerate float rounding of their sums


def epochs_factor_of(strategy: Strategy) -> float:
    """Sum of the strategy's ``*_epochs_factor`` hyperparameter values (its training cost in budget units)."""
    return float(sum(v for k, v in strategy.settings if k.endswith("_epochs_factor")))


class SearchSpace:
    """The catalogue strategies (stable order) and the rules that make a sequence of them a scheme."""

    def __init__(self, catalog: Catalog | None = None, *, max_length: int | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.rules: SearchRules = self.catalog.search_rules
        self.max_length = int(max_length if max_length is not None else self.rules.max_length)
        self.strategies: list[Strategy] = self.catalog.strategies()
        self.ids: list[str] = [s.id for s in self.strategies]
        self.index: dict[str, int] = {sid: i for i, sid in enumerate(self.ids)}
        self.methods: list[str] = list(self.catalog.methods)
        method_pos = {m: i for i, m in enumerate(self.methods)}
        self._method = np.array([method_pos[s.method] for s in self.strategies], np.int64)
        self._factor = np.array([epochs_factor_of(s) for s in self.strategies], np.float64)
        self._ids = np.array(self.ids, dtype=object)
        self._by_method = [np.flatnonzero(self._method == i) for i in range(len(self.methods))]

    def __len__(self) -> int:
        return len(self.strategies)

    # -- lookup ------------------------------------------------------------------------------------------
    def strategy(self, strategy_id: str) -> Strategy:
        """The grid strategy with this id; raises ``NotFoundError``."""
        i = self.index.get(strategy_id)
        if i is None:
            raise NotFoundError(f"strategy {strategy_id!r} is not in the catalogue grid")
        return self.strategies[i]

    def epochs_factor(self, strategy_id: str) -> float:
        """Sum of the strategy's ``*_epochs_factor`` values; raises ``NotFoundError`` off the grid."""
        return epochs_factor_of(self.strategy(strategy_id))

    def to_scheme(self, key: Sequence[str]) -> Scheme:
        return Scheme(tuple(self.strategy(s) for s in key))

    def parse(self, text: str) -> SchemeKey:
        """``A(...) > B(...)`` as a key (omitted values take the grid's middle); raises ``ValidationError``."""
        return self.catalog.parse_scheme(text).key

    # -- rules -------------------------------------------------------------------------------------------
    def why_not(self, scheme: Sequence[str]) -> str | None:
        """Why ``scheme`` breaks a rule (one line), or None when it is allowed."""
        key = tuple(scheme)
        if len(key) > self.max_length:
            return f"{len(key)} steps, more than the maximum {self.max_length}"
        for s in key:
            if s not in self.index:
                return f"strategy {s} is not in the catalogue grid"
        total = sum(self._factor[self.index[s]] for s in key)
        if total > self.rules.max_epochs_factor_sum + _EPS:
            return (f"its epochs factors sum to {total:g}, more than the maximum "
                    f"{self.rules.max_epochs_factor_sum:g}")
        methods = [self.strategies[self.index[s]].method for s in key]
        for i, m in enumerate(methods):
            if i > 0 and m in self.rules.only_first:
                return f"{m} may only start a scheme"
            if i < len(methods) - 1 and m in self.rules.only_last:
                return f"nothing may follow {m}"
            banned = set(self.rules.not_after.get(m, ())) & set(methods[:i])
            if banned:
                return f"{m} may not come after {sorted(banned)[0]}"
        return None

    def allowed(self, scheme: Sequence[str]) -> bool:
        return self.why_not(scheme) is None

    def _extension_mask(self, scheme: Sequence[str]) -> np.ndarray:
        """Boolean mask over ``self.strategies``: which may extend the (allowed) ``scheme``."""
        key = tuple(scheme)
        none = np.zeros(len(self.strategies), bool)
        if len(key) + 1 > self.max_length or not self.allowed(key):
            return none
        methods = [self.strategies[self.index[s]].method for s in key]
        if methods and methods[-1] in self.rules.only_last:
            return none
        ok_method = np.array([not (key and m in self.rules.only_first)
                              and not (set(self.rules.not_after.get(m, ())) & set(methods))
                              for m in self.methods])
        room = self.rules.max_epochs_factor_sum + _EPS - sum(self._factor[self.index[s]] for s in key)
        return ok_method[self._method] & (self._factor <= room)

    def extensions(self, scheme: Sequence[str]) -> list[str]:
        """Every strategy id ``s`` with ``allowed(scheme + (s,))``, in catalogue order."""
        return self._ids[self._extension_mask(scheme)].tolist()

    def random_scheme(self, rng: np.random.Generator, length: int) -> SchemeKey | None:
        """A random allowed scheme of ``length`` steps: each step a uniform method, then a uniform strategy of
        it, among those the rules allow; shorter when no step can follow, None when not even one can."""
        key: SchemeKey = ()
        for _ in range(min(length, self.max_length)):
            mask = self._extension_mask(key)
            options = [idx[mask[idx]] for idx in self._by_method]
            options = [o for o in options if len(o)]
            if not options:
                break
            pick = options[int(rng.integers(len(options)))]
            key = (*key, self.ids[int(pick[int(rng.integers(len(pick)))])])
        return key or None
