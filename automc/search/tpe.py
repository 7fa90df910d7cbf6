"""Optuna's multi-objective TPE over schemes: what a user would pick instead of a dedicated search."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from automc.search._optuna import OptunaStrategy

if TYPE_CHECKING:
    import optuna


class TPEStrategy(OptunaStrategy):
    """Multivariate TPE on (validation accuracy, PR) with PR < gamma a constraint; Optuna's defaults otherwise.

    The trials asked in one round stay RUNNING, so the constant liar (on by default) spreads a round's schemes.
    """

    name: ClassVar[str] = "tpe"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
