"""Fixtures the search tests share: a small learnable synthetic task and the catalogue's search space."""

from __future__ import annotations

import pytest

from automc.compress.data import synthetic
from automc.search.space import SearchSpace


@pytest.fixture(scope="module")
def data():
    """4 classes of 16x16 images (tint + stripe orientation + noise)."""
    return synthetic(num_classes=4, per_class=48, size=16, seed=0)


@pytest.fixture(scope="session")
def space():
    return SearchSpace()
