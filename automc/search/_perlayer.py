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
