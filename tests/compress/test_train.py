import copy

import torch

from automc.compress.base import Task, TrainBudget
from automc.compress.models import build_model
from automc.compress.train import Hooks, evaluate, finetune, steps_for


def test_fractional_epochs_count_steps(syn_task):
    spe = syn_task.data.steps_per_epoch(syn_task.budget.batch_size)
    assert steps_for(syn_task, 1.0) == spe
    assert steps_for(syn_task, 0.4) == max(1, round(0.4 * spe))
    assert steps_for(syn_task, 0.0) == 0
    assert steps_for(syn_task, 0.001) == 1


def test_hooks_are_called(syn_task):
    model = build_model("resnet8", 4, width=4)
    calls = {"step": [], "epoch": [], "reg": 0}

    def reg(m):
        calls["reg"] += 1
        return torch.zeros(())

    hooks = Hooks(regularize=reg, after_step=lambda m, s, n: calls["step"].append((s, n)),
                  after_epoch=lambda m, e: calls["epoch"].append(e))
    spe = syn_task.data.steps_per_epoch(syn_task.budget.batch_size)
    log = finetune(model, syn_task, 1.5, hooks=hooks)
    assert log.steps == round(1.5 * spe)
    assert [s for s, _ in calls["step"]] == list(range(1, log.steps + 1))
    assert calls["epoch"] == [1] and calls["reg"] == log.steps


def test_seeded_and_learns(syn_data):
    task = Task(syn_data, 0.4, TrainBudget(epochs=6, batch_size=32, lr=0.05))
    torch.manual_seed(0)
    base = build_model("resnet8", 4, width=4)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    finetune(a, task, 6)
    finetune(b, task, 6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert evaluate(a, syn_data, "test").top1 > 0.8  # chance is 0.25


def test_distillation_pulls_student_towards_teacher(syn_model, syn_task):
    student = build_model("resnet8", 4, width=4)
    finetune(student, syn_task, 1.0, teacher=syn_model, kd_alpha=0.9, kd_temperature=4.0)
    assert evaluate(student, syn_task.data).total == syn_task.data.size("test")
