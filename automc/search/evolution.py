"""NSGA-II over schemes through Optuna's ``NSGAIISampler`` (the evolutionary baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from automc.search._base import Option
from automc.search._optuna import OptunaStrategy

if TYPE_CHECKING:
    import optuna


class EvolutionStrategy(OptunaStrategy):
    """NSGA-II on (validation accuracy, FR) of feasible schemes (``_optuna``); one generation = ``population_size``
    schemes.

    The history is cut into generations in evaluation order (COMPLETE schemes, prefixes included), as Optuna
    itself numbers told trials, so the population of a rebuilt study is the one an uninterrupted run had.
    ``options["population_size"]`` defaults to the schemes per round (10): with budgets of 40-100 steps that
    gives 4-10 generations.
    """

    name: ClassVar[str] = "evolution"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "population_size": Option("int", None, "schemes per NSGA-II generation (default: the schemes per round, "
                                  "at least 2)", low=2),
    }

    @property
    def population_size(self) -> int:
        return max(2, int(self.options["population_size"] or self.context.per_round))

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)

    def trial_system_attrs(self, index: int) -> dict[str, Any]:
        import optuna

        key = optuna.samplers.NSGAIISampler._get_generation_key()
        return {key: index // self.population_size}
