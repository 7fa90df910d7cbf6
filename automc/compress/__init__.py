"""Compression: tasks (models, data, metrics, fine-tune loop), channel surgery, methods and schemes.

``METHODS`` maps each catalogue method name to its implementation class.
"""

# Imported for their registrations: builtin adds ``digits`` to ``data.BUILTIN_DATASETS``; lowrank (and lma, below)
# add their replacement layers to ``layers.SPEC_TYPES``, which saving rebuilds compressed models from.
from automc.compress import builtin, lowrank  # noqa: F401
from automc.compress.base import Method, Task, TrainBudget, step_ratio
from automc.compress.hos import HOS
from automc.compress.legr import LearnedGlobalRanking
from automc.compress.lfb import LFB
from automc.compress.lma import LMA
from automc.compress.ns import NetworkSlimming
from automc.compress.plp import LayerwisePruning
from automc.compress.sfp import SoftFilterPruning

METHODS: dict[str, type[Method]] = {
    NetworkSlimming.name: NetworkSlimming,
    SoftFilterPruning.name: SoftFilterPruning,
    LearnedGlobalRanking.name: LearnedGlobalRanking,
    HOS.name: HOS,
    LFB.name: LFB,
    LMA.name: LMA,
    LayerwisePruning.name: LayerwisePruning,
}

__all__ = ["METHODS", "Method", "Task", "TrainBudget", "step_ratio"]
