"""Reading numbers out of stored rows, where a value may be missing, text, NaN or infinite."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (missing, text, NaN, infinite)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
