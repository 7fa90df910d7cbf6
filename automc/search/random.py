"""Random search: schemes of random length made of random catalogue strategies that the space's rules allow."""

from __future__ import annotations

import numpy as np

from automc.search._base import History, SchemeKey, SearchStrategy


class RandomStrategy(SearchStrategy):
    """Each proposal draws a length in 1..L, then a random allowed scheme of that length not yet evaluated."""

    name = "random"

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        space = self.context.space
        out: list[SchemeKey] = []
        for _ in range(50 * max(1, n)):  # a bounded number of draws: a nearly exhausted space ends the search
            if len(out) >= n:
                break
            scheme = tuple(space.random_scheme(rng, int(rng.integers(1, space.max_length + 1))) or ())
            if scheme and scheme not in history and scheme not in out and not _extends_failure(history, scheme):
                out.append(scheme)
        return out


def _extends_failure(history: History, scheme: SchemeKey) -> bool:
    """True when a prefix of ``scheme`` failed: there is no model to extend."""
    return any((o := history.get(scheme[:k])) is not None and not o.ok for k in range(1, len(scheme)))
