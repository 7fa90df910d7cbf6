"""The contract every compression method implements, and the arithmetic of a scheme's step targets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from automc.compress.data import Data


@dataclass(frozen=True)
class TrainBudget:
    """Base fine-tune budget; the catalogue's ``*_epochs_factor`` values multiply ``epochs``."""

    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Fine-tuning after pruning distils from the teacher (``Task.teacher``, else the step's input model) with this
    # weight (0: labels only); with a 10% data sample this recovers several points over label-only fine-tuning.
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0

    def epochs_for(self, factor: float) -> float:
        return max(0.0, float(factor) * self.epochs)


@dataclass
class Task:
    """A compression task: data, the parameter-reduction target gamma, the budget and where to run.

    ``teacher``: the model every fine-tune distils from (a scheme's or search's original, unpruned model), used
    as it is (never copied, only run in eval mode under ``torch.no_grad``); None: each step's input model.
    """

    data: Data
    target_pr: float
    budget: TrainBudget = field(default_factory=TrainBudget)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    amp: bool = True  # bf16/fp16 autocast on CUDA; ignored on CPU
    teacher: nn.Module | None = field(default=None, repr=False, compare=False)


def step_ratio(task_target_pr: float, params_original: int, params_current: int, factor: float) -> float:
    """Share of the *current* model's parameters one step removes.

    ``target_ratio_factor`` is the step's absolute share of the target γ (the paper's HP_2, a reduction rate): the
    step removes ``factor * gamma * P0`` parameters of the original model, but never more than is still missing to
    γ. So a scheme whose factors sum to at least 1 reaches γ, its last step closing the target exactly (measured on
    the current model, so earlier steps' rounding is made up), and a step after that removes nothing.
    """
    pr_so_far = 1.0 - params_current / params_original
    missing = max(0.0, task_target_pr - pr_so_far)
    return min(0.95, min(factor * task_target_pr, missing) * params_original / params_current)


class Method(ABC):
    """A compression method: returns a new, physically smaller, fine-tuned model.

    ``ratio`` is the share of ``model``'s parameters to remove in this call (see ``step_ratio``); the result
    must be within 3 percentage points of it or the method raises ``CompressionError`` saying why.
    ``model`` is not modified.
    """

    name: ClassVar[str]

    @abstractmethod
    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        """Compress ``model`` by ``ratio`` of its parameters using the catalogue hyperparameters ``params``."""
