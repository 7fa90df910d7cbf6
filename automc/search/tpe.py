"""Optuna's multi-objective TPE over schemes: what a user would pick instead of a dedicated search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from automc.search._base import Option
from automc.search._optuna import OptunaStrategy

if TYPE_CHECKING:
    import optuna


class TPEStrategy(OptunaStrategy):
    """Multivariate TPE on (validation accuracy, FR) of feasible schemes (``_optuna``); Optuna's defaults otherwise,
    except the random start-up: one round (``options["startup_trials"]``, default the schemes per round).

    Optuna's default of 10 random start-up trials is most of the trials a 20-40 step budget affords (a trial costs
    1-5 steps), which would make TPE random search under another name. The trials asked in one round stay RUNNING,
    so the constant liar spreads a round's schemes.
    """

    name: ClassVar[str] = "tpe"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "startup_trials": Option("int", None, "random trials before TPE models the history (default: the schemes "
                                 "per round)", low=1),
    }

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        startup = max(1, int(self.options["startup_trials"] or self.context.per_round))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)
