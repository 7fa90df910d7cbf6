import pytest
import torch
from torch import nn

from automc.compress.metrics import (
    Accuracy,
    accuracy_change,
    count_flops,
    count_params,
    flops_reduction,
    param_reduction,
    wilson_interval,
)


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert Accuracy(0, 0).interval == (0.0, 1.0)


def test_ratios_follow_the_paper():
    assert param_reduction(100, 60) == pytest.approx(0.4)
    assert flops_reduction(200, 50) == pytest.approx(0.75)
    assert accuracy_change(0.9, 0.81) == pytest.approx(-0.1)  # relative, not percentage points


def test_flops_are_two_per_mac():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    macs = 4 * 3 * 9 * 8 * 8
    assert count_flops(conv, torch.randn(1, 3, 8, 8)) == 2 * macs
    assert count_params(conv) == 4 * 3 * 9
