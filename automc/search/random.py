"""Random search: feasible schemes of random length made of random catalogue strategies the space's rules allow."""

from __future__ import annotations

import numpy as np

from automc.search._base import History, SchemeKey, SearchStrategy


class RandomStrategy(SearchStrategy):
    """Each proposal draws a length in 1..L, then a random feasible scheme of at most that length (it reaches γ)
    not tried yet."""

    name = "random"

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        space = self.context.space
        out: list[SchemeKey] = []
        for _ in range(50 * max(1, n)):  # a bounded number of draws: a nearly exhausted space ends the search
            if len(out) >= n:
                break
            scheme = tuple(space.random_scheme(rng, int(rng.integers(1, space.max_length + 1))) or ())
            if scheme and not history.tried(scheme) and scheme not in out:
                out.append(scheme)
        return out
