"""The contract between search strategies and the search loop (``automc.search.run``).

A strategy proposes schemes; the loop evaluates them step by step through one evaluator (each missing prefix
first, each step costing one unit of budget) and writes every step to the store. A strategy sees evaluations
only as ``Observation`` records, which carry validation accuracy but never test accuracy: selection never sees
test data. A strategy keeps no history of its own (the loop rebuilds ``History`` from the store on resume);
state that cannot be rebuilt from the history (an RL controller's weights) goes through ``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from automc.kb.records import TaskFeatures
    from automc.search.space import SearchSpace

SchemeKey = tuple[str, ...]  # strategy ids in order; () is the base model


@dataclass(frozen=True)
class Observation:
    """One evaluated scheme as a strategy sees it (no test accuracy, by construction)."""

    scheme: SchemeKey
    state: str  # "COMPLETE" | "FAIL"
    val_accuracy: float | None = None  # on the selection split
    pr: float | None = None  # parameter reduction against the base model
    fr: float | None = None  # FLOPs reduction against the base model
    params: float | None = None
    flops: float | None = None
    round: int = 0
    evaluation_id: str = ""
    error: str = ""

    @property
    def parent(self) -> SchemeKey:
        return self.scheme[:-1]

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETE"


@dataclass
class History:
    """The base model and every scheme evaluated so far in this run, in evaluation order."""

    base: Observation
    observations: list[Observation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_scheme = {o.scheme: o for o in self.observations}

    def add(self, obs: Observation) -> None:
        self.observations.append(obs)
        self._by_scheme[obs.scheme] = obs

    def get(self, scheme: Sequence[str]) -> Observation | None:
        key = tuple(scheme)
        return self.base if key == () else self._by_scheme.get(key)

    def __contains__(self, scheme: object) -> bool:
        return isinstance(scheme, tuple) and (scheme == () or scheme in self._by_scheme)

    def __len__(self) -> int:
        return len(self.observations)

    def __iter__(self) -> Iterator[Observation]:
        return iter(self.observations)

    def complete(self, *, with_base: bool = False) -> list[Observation]:
        done = [o for o in self.observations if o.ok]
        return [self.base, *done] if with_base else done

    @property
    def rounds(self) -> int:
        return max((o.round for o in self.observations), default=-1) + 1


@dataclass(frozen=True)
class StepRecord:
    """One past step (parent scheme + one strategy) with what it did, on this or another task: F_mo's data."""

    parent: SchemeKey
    strategy: str
    task: str
    features: tuple[float, ...]  # the task's normalised feature vector (``automc.embed.experience``)
    step_ar: float  # relative change of validation accuracy, child vs parent
    step_pr: float  # share of the parent's parameters the step removed


@dataclass
class Context:
    """What every strategy is built with; strategies ignore what they do not need."""

    space: SearchSpace
    target_pr: float
    seed: int = 0
    task: TaskFeatures | None = None
    task_vector: tuple[float, ...] = ()
    embeddings: Mapping[str, Sequence[float]] = field(default_factory=dict)  # strategy id -> KG embedding
    prior: Sequence[StepRecord] = ()  # steps evaluated on other tasks (empty with --no-reuse)
    transfer: Sequence[SchemeKey] = ()  # front schemes of the most similar past tasks (empty with --no-reuse)
    per_round: int = 10
    options: Mapping[str, Any] = field(default_factory=dict)


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """The random stream of one round, derived from the run's seed and the round number (resume needs no state)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round_)])


class SearchStrategy(ABC):
    """Proposes schemes to evaluate. Deterministic for a seed and a history; no persistence of its own."""

    name: ClassVar[str]

    def __init__(self, context: Context) -> None:
        self.context = context

    @abstractmethod
    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        """Up to ``n`` schemes to evaluate next, each allowed by ``context.space`` and not yet in ``history``.

        A scheme whose prefixes are not all in the history costs one budget unit per missing step.
        """

    def observe(self, history: History, new: Sequence[Observation]) -> None:  # noqa: B027 - optional hook
        """After a round's evaluations were added to ``history``."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that the history cannot rebuild (stored on the SearchRun after each round)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned (on resume)."""
