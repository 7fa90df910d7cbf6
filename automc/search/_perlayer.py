"""What the per-layer strategies (AMC, SeerNet) share: a policy as a one-step PLP scheme and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from automc.search._base import SchemeKey


def plp_scheme(space: Any, policy: Sequence[float], criterion: str, epochs_factor: float) -> SchemeKey:
    """The one-step scheme that applies ``policy`` (a PLP policy strategy closing γ)."""
    from automc.catalog.policy import format_policy

    s = space.catalog.make_strategy("PLP", {"finetune_epochs_factor": epochs_factor, "target_ratio_factor": 1.0,
                                            "layer_keep": format_policy(policy), "filter_criterion": criterion})
    return (s.id,)


def policy_of(space: Any, scheme: SchemeKey) -> tuple[float, ...] | None:
    """The policy of a one-step PLP policy scheme, else None."""
    from automc.catalog.policy import UNIFORM, parse_policy

    if len(scheme) != 1:
        return None
    try:
        s = space.strategy(scheme[0])
    except Exception:  # noqa: BLE001 - not a strategy of this catalogue: not an episode
        return None
    keep = s.params.get("layer_keep") if s.method == "PLP" else None
    return None if keep is None or keep == UNIFORM else parse_policy(str(keep))


def stagewise(policy: Sequence[float], channels: Sequence[int]) -> tuple[float, ...]:
    """``policy`` (found for another model of the family, maybe another depth) for layers of ``channels``: as it is
    when the lengths agree, else by stage. A stage is a run of consecutive layers of equal width here; the source
    policy is cut into as many contiguous, near-equal parts, and each layer of stage j keeps part j's mean ratio
    (exact for CIFAR ResNets of any depth, whose stages have equal block counts)."""
    import numpy as np

    if len(policy) == len(channels):
        return tuple(float(k) for k in policy)
    stages: list[int] = []
    for i, c in enumerate(channels):
        if i == 0 or c != channels[i - 1]:
            stages.append(0)
        stages[-1] += 1
    parts = np.array_split(np.asarray(policy, dtype=float), min(len(stages), len(policy)))
    means = [float(p.mean()) for p in parts]
    means += [means[-1]] * (len(stages) - len(means))  # a source shorter than the stages: its last ratio goes on
    return tuple(m for m, n in zip(means, stages, strict=True) for _ in range(n))


def transferred(context: Any) -> list[tuple[float, ...]]:
    """The per-layer policies of the most similar past tasks (``Context.transfer``, best first; empty without
    ``--reuse``), each mapped onto this model's layers by ``stagewise``; not yet on the budget."""
    layers = context.layers
    out: list[tuple[float, ...]] = []
    for key in context.transfer:
        policy = policy_of(context.space, key)
        if policy is not None:
            mapped = stagewise(policy, layers.channels)
            if mapped not in out:
                out.append(mapped)
    return out
