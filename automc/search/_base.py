"""The contract between search strategies and the search loop (``automc.search._optimize``).

A strategy proposes schemes that reach the target; the loop evaluates them step by step through one evaluator (each
missing prefix first, each step charged the training compute it spent) and writes every step to the store. A
strategy sees evaluations only as ``Observation`` records, which carry validation accuracy but never test accuracy:
selection never sees test data. A strategy keeps no history of its own (the loop rebuilds ``History`` from the
store on resume); state that cannot be rebuilt from the history (an RL controller's weights) goes through
``state_dict``. A strategy declares the options it takes (``--strategy-option KEY=VALUE``) in ``OPTIONS``, the one
place that gives their types, defaults and ranges.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from automc.kb.states import EVALUATED, State

if TYPE_CHECKING:
    from automc.kb.records import TaskFeatures
    from automc.search.space import SearchSpace

SchemeKey = tuple[str, ...]  # ``automc.catalog.Scheme.key``: strategy ids in order; () is the base model


@dataclass(frozen=True)
class Observation:
    """One evaluated scheme as a strategy sees it (no test accuracy, by construction)."""

    scheme: SchemeKey
    state: str  # State.COMPLETE | State.FAILED
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
        return self.state == State.COMPLETE


@dataclass
class History:
    """The base model and every scheme evaluated so far in this run, in evaluation order; ``screened``: every
    proposal screened at rung 0 (``--screen``, and every proposal of a strategy that learns from rung 0), in order."""

    base: Observation
    observations: list[Observation] = field(default_factory=list)
    screened: list[Observation] = field(default_factory=list)

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

    def tried(self, scheme: Sequence[str]) -> bool:
        """Evaluated, or cannot be: a prefix of it failed (no model to extend)."""
        key = tuple(scheme)
        return key in self or any((o := self._by_scheme.get(key[:k])) is not None and not o.ok
                                  for k in range(1, len(key)))

    def __iter__(self) -> Iterator[Observation]:
        return iter(self.observations)

    def complete(self, *, with_base: bool = False) -> list[Observation]:
        done = [o for o in self.observations if o.ok]
        return [self.base, *done] if with_base else done

    @property
    def rounds(self) -> int:
        return max((o.round for o in self.observations), default=-1) + 1

    @classmethod
    def from_rows(cls, base: Observation, rows: Sequence[Mapping[str, Any]]) -> History:
        """A run's history from its stored evaluations (``Store.run_evaluations``, in run order)."""
        screened = [observation(r) for r in rows if r.get("fidelity") == "screen" and r.get("state") in EVALUATED]
        return cls(base, [observation(r) for r in search_rows(rows)], screened)


def charged_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The evaluations whose compute the search budget counts: its steps (``search_rows``) and the screening of
    proposals (fidelity "screen", ``--screen``)."""
    return [r for r in rows if r.get("fidelity") in ("search", "screen") and r.get("state") in EVALUATED]


def search_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The evaluations that count as a run's steps: search fidelity, COMPLETE or FAILED (an INTERRUPTED one is
    evaluated again)."""
    return [r for r in rows if r.get("fidelity") == "search" and r.get("state") in EVALUATED]


def observation(row: Mapping[str, Any]) -> Observation:
    """A stored evaluation as a strategy sees it (validation accuracy only, never test accuracy)."""
    from automc.catalog import scheme_key

    def num(k: str) -> float | None:
        return None if row.get(k) is None else float(row[k])

    return Observation(scheme=scheme_key(row.get("scheme")), state=str(row["state"]),
                       val_accuracy=num("val_accuracy"), pr=num("pr"), fr=num("fr"), params=num("params"),
                       flops=num("flops"), round=int(row.get("round") or 0), evaluation_id=str(row["id"]),
                       error=str(row.get("error") or ""))


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
    target_fr: float | None = None  # the user's FLOPs-reduction target (measured FR must reach it)
    task: TaskFeatures | None = None
    task_vector: tuple[float, ...] = ()
    embeddings: Mapping[str, Sequence[float]] = field(default_factory=dict)  # strategy id -> KG embedding
    prior: Sequence[StepRecord] = ()  # steps evaluated on other tasks (empty with --no-reuse)
    transfer: Sequence[SchemeKey] = ()  # front schemes of the most similar past tasks (empty with --no-reuse)
    per_round: int = 10
    options: Mapping[str, Any] = field(default_factory=dict)  # --strategy-option values (``OPTIONS``)
    layers: Any = None  # the base model's ``compress.layerwise.PolicySpace``, for per-layer strategies only


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True)
class Option:
    """One strategy option: its type (int, float, bool, str or choice), default, inclusive range and meaning.

    ``default=None`` means the strategy derives it from the context (``help`` says how).
    """

    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    above: float | None = None  # exclusive lower bound (a learning rate > 0)

    def parse(self, value: Any) -> Any:
        """``value`` (text from the command line, or a typed value from the API or a stored run) as the declared
        type, checked against the range; raises ``ValueError`` saying what was expected."""
        text = value.strip() if isinstance(value, str) else None
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in _BOOLS:
                return _BOOLS[text.lower()]
            raise ValueError(f"expected true or false, got {value!r}")
        if self.type in ("str", "choice"):
            if not isinstance(value, str):
                raise ValueError(f"expected text, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
            return value
        number = self._number(value, text)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high) or (
                self.above is not None and number <= self.above):
            raise ValueError(f"must be {self.range()}, got {value!r}")
        return number

    def _number(self, value: Any, text: str | None) -> int | float:
        numeric = int if self.type == "int" else (int, float)
        if self.type not in ("int", "float"):
            raise TypeError(f"unknown option type {self.type!r}")
        try:
            if isinstance(value, bool) or not (text is not None or isinstance(value, numeric)):
                raise ValueError
            number = int(text if text is not None else value) if self.type == "int" else float(
                text if text is not None else value)
            if not math.isfinite(number):
                raise ValueError
        except ValueError:
            kind = "an integer" if self.type == "int" else "a number"
            raise ValueError(f"expected {kind}, got {value!r}") from None
        return number

    def range(self) -> str:
        """The accepted values in words, e.g. ``in [0, 1]`` or ``≥ 1``."""
        if self.above is not None:
            return f"> {self.above:g}" + ("" if self.high is None else f" and ≤ {self.high:g}")
        if self.low is not None and self.high is not None:
            return f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"≥ {self.low:g}"
        return "" if self.high is None else f"≤ {self.high:g}"

    def describe(self) -> str:
        """One line for ``--strategy-option help``: type, range, default, meaning."""
        kind = f"one of {', '.join(self.choices)}" if self.choices else self.type
        rng = self.range()
        default = "" if self.default is None else f", default {str(self.default).lower()}" if self.type == "bool" \
            else f", default {self.default}"
        return f"{kind}{' ' + rng if rng else ''}{default}: {self.help}"


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """The random stream of one round, derived from the run's seed and the round number (resume needs no state)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round_)])


class SearchStrategy(ABC):
    """Proposes schemes to evaluate. Deterministic for a seed and a history; no persistence of its own."""

    name: ClassVar[str]
    OPTIONS: ClassVar[Mapping[str, Option]] = {}  # what ``--strategy-option`` may set, by name
    # a strategy over per-layer policies gets the base model's layers (``Context.layers``); one that learns from
    # rung 0 has every proposal screened (``History.screened``) and chooses its round's size (``round_size``)
    per_layer: ClassVar[bool] = False
    learns_from_screen: ClassVar[bool] = False
    reuses: ClassVar[bool] = False  # learns from other tasks (``Context.prior`` / ``transfer``): --reuse applies

    def __init__(self, context: Context) -> None:
        self.context = context
        # the declared defaults with the given values on top; other strategies' keys are ignored here (a run
        # refuses them before it starts: ``parse_options``)
        given = {k: v for k, v in context.options.items() if k in self.OPTIONS}
        self.options: dict[str, Any] = {**{k: o.default for k, o in self.OPTIONS.items()},
                                         **self.parse_options(given)}

    @classmethod
    def parse_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` checked against ``OPTIONS`` and converted to the declared types (text is parsed, never
        evaluated); raises ``ValueError`` naming the key, the strategy and the keys it accepts."""
        out: dict[str, Any] = {}
        for key, value in given.items():
            option = cls.OPTIONS.get(key)
            if option is None:
                accepted = f"it accepts {', '.join(sorted(cls.OPTIONS))}" if cls.OPTIONS else "it takes none"
                raise ValueError(f"unknown option {key!r} for strategy {cls.name}; {accepted}")
            try:
                out[key] = option.parse(value)
            except ValueError as e:
                raise ValueError(f"{key} (strategy {cls.name}): {e}") from None
        return dict(sorted(out.items()))

    @abstractmethod
    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        """Up to ``n`` schemes to evaluate next, each allowed by ``context.space`` and not yet in ``history``.

        Each proposal must reach the target (``SearchSpace.feasible``); its prefixes not in the history are
        evaluated first, each charged its compute.
        """

    def screen_images(self) -> int | None:
        """Validation images of a rung-0 screening of this strategy's proposals (None: the whole split)."""
        return None

    def round_size(self, n: int, screen: int) -> tuple[int, int]:
        """How many schemes to ask ``propose`` for and how many of them go to the search fidelity, when the run
        allows ``n`` steps this round and screens ``screen`` proposals per step (``--screen``)."""
        return n * screen, n

    def observe(self, history: History, new: Sequence[Observation]) -> None:  # noqa: B027 - optional hook
        """After a round's evaluations were added to ``history``."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that the history cannot rebuild (stored on the SearchRun after each round)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned (on resume)."""

    def summary(self) -> dict[str, Any]:
        """What the strategy learnt, for the run's result (e.g. the steps of each task its model fitted)."""
        return {}

    def predictions(self, history: History, schemes: Sequence[SchemeKey]) -> dict[SchemeKey, dict[str, Any]]:
        """What the strategy predicted of each of ``schemes`` (its latest proposals) before they run: a JSON-able
        dict per scheme, stored on the scheme's evaluation. A strategy without a model predicts nothing."""
        return {}
