"""The search space as data: the catalogue's grid strategies and the ``[search]`` rules of ``catalog.toml``.

A scheme (``SchemeKey``) is a tuple of strategy ids. It is allowed when it has at most ``max_length`` steps,
every step is a grid strategy or a policy strategy (a grid strategy with its ``policy`` hyperparameter set to a
per-layer policy found by a per-layer search: ``PLP(layer_keep=0.5:0.25:...)``), the sum of its strategies'
``*_epochs_factor`` values stays within ``max_epochs_factor_sum``, an ``only_first`` method only starts it, nothing
follows an ``only_last`` method, no method B comes anywhere after a method listed in ``not_after[B]``, and it reaches
the target γ or can still reach it in one more step.

A strategy's ``target_ratio_factor`` is its absolute share of γ (``compress.base.step_ratio``), so a scheme's PR is
computed, not predicted: ``γ · min(1, Σ shares)``. The step that brings the sum to 1 closes the scheme (nothing may
follow it) and, when it would overshoot, must ask the smallest share of its method's grid that still closes
(``NS(0.9)`` after ``NS(0.3)`` removes only 0.7 γ, the same model as ``NS(0.7)``: one of them is enough). A scheme
that is not closed is a step on the way: strategies propose closed schemes (``feasible``), and their prefixes are
evaluated on the way to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from automc.catalog import Catalog, Scheme, SearchRules, Strategy, load_catalog
from automc.errors import NotFoundError
from automc.search._base import SchemeKey

_EPS = 1e-9  # factors and shares are decimal grid values: tolerate float rounding of their sums


def epochs_factor_of(strategy: Strategy) -> float:
    """Sum of the strategy's ``*_epochs_factor`` hyperparameter values (its training cost in budget units)."""
    return float(sum(v for k, v in strategy.settings if k.endswith("_epochs_factor")))


def share_of(strategy: Strategy) -> float:
    """The strategy's share of the target γ (``target_ratio_factor``; 1.0 when it has none, as ``apply_step``)."""
    return float(strategy.params.get("target_ratio_factor", 1.0))


class SearchSpace:
    """The catalogue strategies (stable order) and the rules that make a sequence of them a scheme."""

    def __init__(self, catalog: Catalog | None = None, *, max_length: int | None = None,
                 exclude: Sequence[str] | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.rules: SearchRules = self.catalog.search_rules
        # methods no scheme may use (``[search] exclude``; ``exclude=()`` keeps every method, e.g. for baselines)
        self.excluded: frozenset[str] = frozenset(self.rules.exclude if exclude is None else exclude)
        self.max_length = int(max_length if max_length is not None else self.rules.max_length)
        self.strategies: list[Strategy] = self.catalog.strategies()
        self.ids: list[str] = [s.id for s in self.strategies]
        self.index: dict[str, int] = {sid: i for i, sid in enumerate(self.ids)}
        self._policies: dict[str, Strategy] = {}  # policy strategies met so far (off the grid), by id
        self.methods: list[str] = list(self.catalog.methods)
        method_pos = {m: i for i, m in enumerate(self.methods)}
        self._method = np.array([method_pos[s.method] for s in self.strategies], np.int64)
        self._factor = np.array([epochs_factor_of(s) for s in self.strategies], np.float64)
        self._share = np.array([share_of(s) for s in self.strategies], np.float64)
        self._ids = np.array(self.ids, dtype=object)
        self._by_method = [np.flatnonzero(self._method == i) for i in range(len(self.methods))]
        # per method: its grid's shares (ascending) and the cheapest epochs factor at each share
        self._shares = {m: np.unique(self._share[idx]) for m, idx in zip(self.methods, self._by_method, strict=True)}
        self._cheapest = {(m, float(v)): float(self._factor[idx][self._share[idx] == v].min())
                          for m, idx in zip(self.methods, self._by_method, strict=True) for v in self._shares[m]}

    def __len__(self) -> int:
        return len(self.strategies)

    # -- lookup ------------------------------------------------------------------------------------------
    def strategy(self, strategy_id: str) -> Strategy:
        """The grid or policy strategy with this id; raises ``NotFoundError``."""
        i = self.index.get(strategy_id)
        if i is not None:
            return self.strategies[i]
        s = self._policies.get(strategy_id)
        if s is None:
            s = self._policy_strategy(strategy_id)
            if s is None:
                raise NotFoundError(f"strategy {strategy_id!r} is not in the catalogue grid")
            self._policies[strategy_id] = s
        return s

    def _policy_strategy(self, strategy_id: str) -> Strategy | None:
        """The policy strategy ``strategy_id`` names (its policy hyperparameter off the grid, every other value on
        it, written in the catalogue's canonical form), or None."""
        from automc.errors import ValidationError

        try:
            s = self.catalog.parse_strategy(strategy_id)
        except (ValidationError, NotFoundError):
            return None
        grid = self.catalog.method(s.method).grid
        hps = self.catalog.hyperparameters
        free = [k for k in grid if hps[k].type == "policy"]
        if s.id != strategy_id or not free or len(s.settings) != len(grid):
            return None
        return s if all(v in grid[k] for k, v in s.settings if k not in free) else None

    def is_strategy(self, strategy_id: str) -> bool:
        """Whether ``strategy_id`` is a grid or a policy strategy."""
        try:
            self.strategy(strategy_id)
        except NotFoundError:
            return False
        return True

    def epochs_factor(self, strategy_id: str) -> float:
        """Sum of the strategy's ``*_epochs_factor`` values; raises ``NotFoundError`` off the grid."""
        i = self.index.get(strategy_id)
        return float(self._factor[i]) if i is not None else epochs_factor_of(self.strategy(strategy_id))

    def _share_of(self, strategy_id: str) -> float:
        i = self.index.get(strategy_id)
        return float(self._share[i]) if i is not None else share_of(self.strategy(strategy_id))

    def share(self, scheme: Sequence[str]) -> float:
        """The sum of the scheme's shares of γ, at most 1 (1: the scheme reaches γ)."""
        return min(1.0, float(sum(self._share_of(s) for s in scheme)))

    def closed(self, scheme: Sequence[str]) -> bool:
        """Whether the scheme's shares reach γ (its last step closes the target)."""
        return bool(scheme) and self.share(scheme) >= 1.0 - _EPS

    def pr(self, scheme: Sequence[str], target_pr: float) -> float:
        """The scheme's parameter reduction against the base model, computed: γ · its share (the methods land
        within the rounding of channel counts of it)."""
        return float(target_pr) * self.share(scheme)

    def feasible(self, scheme: Sequence[str]) -> bool:
        """Allowed and closed: a scheme a strategy may propose."""
        return self.closed(scheme) and self.allowed(scheme)

    def _canonical(self, method: str, left: float) -> float | None:
        """The smallest share of ``method``'s grid that closes ``left`` (None when none does)."""
        shares = self._shares[method]
        i = int(np.searchsorted(shares, left - _EPS))
        return float(shares[i]) if i < len(shares) else None

    def _can_close(self, methods: Sequence[str], length: int, room: float, left: float) -> bool:
        """Whether one more step may close a scheme of ``length`` steps of ``methods`` with ``left`` of γ to go
        and ``room`` left in its epochs factors."""
        if length >= self.max_length or (methods and methods[-1] in self.rules.only_last):
            return False
        for m in self.methods:
            if m in self.excluded or (methods and m in self.rules.only_first) \
                    or set(self.rules.not_after.get(m, ())) & set(methods):
                continue
            v = self._canonical(m, left)
            if v is not None and self._cheapest[(m, v)] <= room + _EPS:
                return True
        return False

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
            if not self.is_strategy(s):
                return f"strategy {s} is not in the catalogue grid"
        total = sum(self.epochs_factor(s) for s in key)
        if total > self.rules.max_epochs_factor_sum + _EPS:
            return (f"its epochs factors sum to {total:g}, more than the maximum "
                    f"{self.rules.max_epochs_factor_sum:g}")
        methods = [self.strategy(s).method for s in key]
        for i, m in enumerate(methods):
            if m in self.excluded:
                return f"{m} is excluded from the search (catalog.toml [search] exclude)"
            if i > 0 and m in self.rules.only_first:
                return f"{m} may only start a scheme"
            if i < len(methods) - 1 and m in self.rules.only_last:
                return f"nothing may follow {m}"
            banned = set(self.rules.not_after.get(m, ())) & set(methods[:i])
            if banned:
                return f"{m} may not come after {sorted(banned)[0]}"
        return self._why_not_target(key, methods, total)

    def _why_not_target(self, key: SchemeKey, methods: Sequence[str], factors: float) -> str | None:
        """Why ``key`` breaks the target rules (module docstring), or None."""
        reached = 0.0
        for i, s in enumerate(key, 1):
            share = self._share_of(s)
            if reached >= 1.0 - _EPS:
                return f"it reaches the target at step {i - 1}; nothing may follow"
            if reached + share > 1.0 + _EPS:
                v = self._canonical(methods[i - 1], 1.0 - reached)
                if v is not None and abs(v - share) > _EPS:
                    return (f"step {i} asks {share:g} of the target but {1.0 - reached:.3g} is left: "
                            f"{methods[i - 1]} closes it with target_ratio_factor={v:g}")
            reached += share
        if reached < 1.0 - _EPS and not self._can_close(methods, len(key), self.rules.max_epochs_factor_sum - factors,
                                                        1.0 - reached):
            return f"it reaches {reached:.3g} of the target and no allowed step can close it"
        return None

    def allowed(self, scheme: Sequence[str]) -> bool:
        return self.why_not(scheme) is None

    def _extension_mask(self, scheme: Sequence[str]) -> np.ndarray:
        """Boolean mask over ``self.strategies``: which may extend the (allowed) ``scheme``."""
        key = tuple(scheme)
        none = np.zeros(len(self.strategies), bool)
        if len(key) + 1 > self.max_length or not self.allowed(key):
            return none
        methods = [self.strategy(s).method for s in key]
        if methods and methods[-1] in self.rules.only_last:
            return none
        if self.closed(key):
            return none
        ok_method = np.array([m not in self.excluded and not (key and m in self.rules.only_first)
                              and not (set(self.rules.not_after.get(m, ())) & set(methods))
                              for m in self.methods])
        used = sum(self.epochs_factor(s) for s in key)
        mask = ok_method[self._method] & (self._factor <= self.rules.max_epochs_factor_sum + _EPS - used)
        left = 1.0 - self.share(key)
        closes = self._share >= left - _EPS
        for i, m in enumerate(self.methods):  # a closer asks its method's smallest closing share
            v = self._canonical(m, left)
            if v is not None:
                closes_m = self._by_method[i][closes[self._by_method[i]]]
                mask[closes_m[np.abs(self._share[closes_m] - v) > _EPS]] = False
        # a step that does not close must leave a scheme that one more step can close
        for i, m in enumerate(self.methods):
            idx = self._by_method[i][mask[self._by_method[i]] & ~closes[self._by_method[i]]]
            for v in np.unique(self._share[idx]):
                group = idx[self._share[idx] == v]
                for f in np.unique(self._factor[group]):
                    if not self._can_close([*methods, m], len(key) + 1,
                                           self.rules.max_epochs_factor_sum - used - f, left - v):
                        mask[group[self._factor[group] == f]] = False
        return mask

    def closing(self, scheme: Sequence[str], strategy_id: str) -> str | None:
        """``strategy_id`` with its share changed to the one that closes ``scheme`` when it would overshoot (the
        same method and other settings); itself when it does not overshoot; None when its method cannot close."""
        s = self.strategy(strategy_id)
        left = 1.0 - self.share(scheme)
        if share_of(s) <= left + _EPS:
            return strategy_id
        v = self._canonical(s.method, left)
        if v is None:
            return None
        if not hasattr(self, "_variants"):
            self._variants = {(t.method, tuple(kv for kv in t.settings if kv[0] != "target_ratio_factor"),
                               share_of(t)): t.id for t in self.strategies}
        rest = tuple(kv for kv in s.settings if kv[0] != "target_ratio_factor")
        return self._variants.get((s.method, rest, v))

    def close(self, scheme: Sequence[str], rng: np.random.Generator) -> SchemeKey | None:
        """``scheme`` (allowed) closed by one random closer (a uniform method, then a uniform strategy of it);
        itself when closed already, None when nothing can close it."""
        key = tuple(scheme)
        if self.closed(key):
            return key
        mask = self._extension_mask(key) & (self._share >= 1.0 - self.share(key) - _EPS)
        options = [o for o in (idx[mask[idx]] for idx in self._by_method) if len(o)]
        if not options:
            return None
        pick = options[int(rng.integers(len(options)))]
        return (*key, self.ids[int(pick[int(rng.integers(len(pick)))])])

    def closers(self, scheme: Sequence[str]) -> list[str]:
        """The extensions of ``scheme`` that close it (reach γ), in catalogue order."""
        left = 1.0 - self.share(scheme)
        mask = self._extension_mask(scheme) & (self._share >= left - _EPS)
        return self._ids[mask].tolist()

    def extensions(self, scheme: Sequence[str]) -> list[str]:
        """Every strategy id ``s`` with ``allowed(scheme + (s,))``, in catalogue order."""
        return self._ids[self._extension_mask(scheme)].tolist()

    def random_scheme(self, rng: np.random.Generator, length: int) -> SchemeKey | None:
        """A random feasible scheme of at most ``length`` steps: each step a uniform method, then a uniform
        strategy of it, among those the rules allow, the ``length``-th step (or an earlier one, by chance) closing
        the target; None when no scheme can be built."""
        key: SchemeKey = ()
        length = max(1, min(length, self.max_length))
        while not self.closed(key):
            mask = self._extension_mask(key)
            if len(key) + 1 >= length:
                mask &= self._share >= 1.0 - self.share(key) - _EPS
            options = [idx[mask[idx]] for idx in self._by_method]
            options = [o for o in options if len(o)]
            if not options:
                return None
            pick = options[int(rng.integers(len(options)))]
            key = (*key, self.ids[int(pick[int(rng.integers(len(pick)))])])
        return key
