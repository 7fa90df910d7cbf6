"""LeGR: learned global ranking (Chin et al., "Towards Efficient Model Compression via Learned Global
Ranking", CVPR 2020, https://arxiv.org/abs/1904.12368).

Each prunable layer ``l`` ranks its channels by ``alpha_l * norm(score) + kappa_l`` where ``score`` is the
``filter_criterion`` and ``norm`` divides by the layer's mean score. The affine pairs are learned by a
regularised evolutionary search (Real et al. 2019): a population of up to ``population`` candidates,
tournament selection of a parent, mutation of a random subset of its (alpha, kappa), the oldest candidate
retired. A candidate's fitness is the validation accuracy (``eval_batches`` batches of the ``"val"`` split)
of the model pruned to ``ratio`` with its ranking, its BN statistics re-estimated on ``bn_batches`` training
batches (as in EagleEye, Li et al. 2020: without it a few fine-tune steps rank candidates by noise), and
fine-tuned for ``ea_finetune_epochs_factor × budget`` epochs. The search spends about
``ea_epochs_factor × budget`` epochs: it evaluates ``ea_steps / (candidate_steps + eval cost)`` candidates,
clamped to ``[min_candidates, max_candidates]``. Finally the model is pruned with the best ranking, its BN
statistics re-estimated, and fine-tuned for ``finetune_epochs_factor × budget``, distilling from ``Task.teacher``
(else the input model). The candidates' short fine-tunes are label-only, with or without a teacher.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from automc.compress._common import check_reduction, distillation, resolve_params, task_distillation, task_teacher
from automc.compress.base import Method, Task
from automc.compress.criteria import CRITERIA
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.metrics import count_params
from automc.compress.surgery import prunable_layers, prune_by_scores
from automc.compress.train import evaluate, finetune, steps_for


@dataclass(frozen=True)
class Candidate:
    alpha: tuple[float, ...]
    kappa: tuple[float, ...]
    fitness: float = float("-inf")


def transformed_scores(base: Mapping[str, torch.Tensor], cand: Candidate) -> dict[str, torch.Tensor]:
    """``alpha_l * score / mean(score) + kappa_l`` for every layer (in ``base``'s order)."""
    out = {}
    for (name, s), a, k in zip(base.items(), cand.alpha, cand.kappa, strict=True):
        s = s.float()
        out[name] = a * s / s.mean().clamp_min(1e-12) + k
    return out


class LearnedGlobalRanking(Method):
    name: ClassVar[str] = "LeGR"
    population: ClassVar[int] = 32
    tournament: ClassVar[int] = 4
    eval_batches: ClassVar[int] = 4
    bn_batches: ClassVar[int] = 4
    eval_batch_size: ClassVar[int] = 256
    min_candidates: ClassVar[int] = 2
    max_candidates: ClassVar[int] = 64
    mutate_share: ClassVar[float] = 0.3

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        model = copy.deepcopy(model).to(task.device)
        p0 = count_params(model)
        example = task.data.example_input()
        ft_epochs = task.budget.epochs_for(p["finetune_epochs_factor"])
        if ratio <= 0:
            finetune(model, task, ft_epochs, **task_distillation(task))
            return model
        base = CRITERIA[p["filter_criterion"]](prunable_layers(model, example))
        max_layer = p["max_layer_prune_ratio"]
        cand_epochs = task.budget.epochs_for(p["ea_finetune_epochs_factor"])
        cand_steps = steps_for(task, cand_epochs)
        ea_steps = steps_for(task, task.budget.epochs_for(p["ea_epochs_factor"]))
        n_eval = round(ea_steps / max(1.0, cand_steps + (self.eval_batches + self.bn_batches) / 3))
        n_eval = max(self.min_candidates, min(self.max_candidates, n_eval))
        rng = random.Random(task.seed)
        bn_inputs = train_inputs(task, self.bn_batches)

        def fitness(cand: Candidate) -> float:
            pruned, _ = prune_by_scores(model, transformed_scores(base, cand), ratio, max_layer, example)
            recalibrate_bn(pruned, bn_inputs)
            # No distillation here, even with a task teacher: this fine-tune only ranks candidates (LeGR's fitness,
            # as in the paper); it never reaches the returned model, and a teacher would slow every candidate.
            finetune(pruned, task, cand_epochs)
            acc = evaluate(pruned, task.data, "val", batch_size=self.eval_batch_size,
                           max_batches=self.eval_batches)
            return acc.top1

        n = len(base)
        identity = Candidate((1.0,) * n, (0.0,) * n)
        best = Candidate(identity.alpha, identity.kappa, fitness(identity))
        pop: deque[Candidate] = deque([best], maxlen=self.population)
        for _ in range(n_eval - 1):
            if len(pop) < min(self.population, max(2, n_eval // 2)):
                parent = identity
            else:
                parent = max(rng.sample(list(pop), min(self.tournament, len(pop))), key=lambda c: c.fitness)
            child = self._mutate(parent, rng)
            child = Candidate(child.alpha, child.kappa, fitness(child))
            pop.append(child)  # the deque retires the oldest
            if child.fitness > best.fitness:
                best = child
        self.best_ = best
        pruned, _ = prune_by_scores(model, transformed_scores(base, best), ratio, max_layer, example)
        recalibrate_bn(pruned, train_inputs(task))
        teacher = task_teacher(task)
        finetune(pruned, task, ft_epochs, **distillation(task, model if teacher is None else teacher))
        check_reduction(self.name, p0, count_params(pruned), ratio)
        return pruned

    def _mutate(self, parent: Candidate, rng: random.Random) -> Candidate:
        alpha, kappa = list(parent.alpha), list(parent.kappa)
        for i in range(len(alpha)):
            if rng.random() < self.mutate_share:
                alpha[i] = min(10.0, max(0.1, alpha[i] * rng.lognormvariate(0.0, 0.3)))
                kappa[i] = kappa[i] + rng.gauss(0.0, 0.3)
        return Candidate(tuple(alpha), tuple(kappa))
