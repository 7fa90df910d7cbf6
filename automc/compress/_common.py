"""Small helpers the methods share: catalogue parameters with defaults, the reduction check, the teacher."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from automc.catalog import load_catalog
from automc.compress.base import Task
from automc.errors import CompressionError


def resolve_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` validated against the catalogue; missing values take the grid's middle value.

    Raises ``NotFoundError`` / ``ValidationError`` for an unknown method, name or out-of-domain value.
    """
    cat = load_catalog()
    m = cat.method(method)
    given = cat.make_strategy(method, dict(params), complete=False).params
    return {k: given.get(k, values[len(values) // 2]) for k, values in m.grid.items()}


def check_reduction(method: str, params_before: int, params_after: int, ratio: float,
                    tolerance: float = 0.03) -> None:
    """Raise ``CompressionError`` unless ``1 - after/before`` is within ``tolerance`` of ``ratio``."""
    got = 1.0 - params_after / params_before
    if abs(got - ratio) > tolerance:
        raise CompressionError(f"{method} removed {got:.1%} of the parameters instead of {ratio:.1%} "
                               f"(tolerance ±{tolerance:.0%})")


def distillation(task: Task, teacher: nn.Module) -> dict[str, Any]:
    """``finetune`` keyword arguments that distil from ``teacher`` as the task's budget asks (none when 0)."""
    b = task.budget
    if b.distill_alpha <= 0:
        return {}
    return {"teacher": teacher, "kd_alpha": b.distill_alpha, "kd_temperature": b.distill_temperature}


def task_teacher(task: Task) -> nn.Module | None:
    """``task.teacher`` in eval mode on the task's device (moved in place, never copied); None when unset."""
    t = task.teacher
    return None if t is None else t.to(task.device).eval()


def frozen_teacher(task: Task, model: nn.Module) -> nn.Module:
    """``task_teacher``, else a frozen copy of ``model`` (a step's input) on the task's device, in eval mode."""
    t = task_teacher(task)
    return copy.deepcopy(model).to(task.device).eval().requires_grad_(False) if t is None else t


def task_distillation(task: Task) -> dict[str, Any]:
    """``distillation`` from ``task.teacher``, for a fine-tune that distils only when the task has a teacher."""
    t = task_teacher(task)
    return {} if t is None else distillation(task, t)
