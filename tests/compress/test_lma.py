import pytest
import torch

from automc.compress.lma import MultiSegmentActivation


@pytest.mark.parametrize("segments", [2, 3, 6, 8, 10])
def test_activation_at_init_is_relu(segments):
    act = MultiSegmentActivation(segments)
    x = torch.randn(4, 5, 6, 6) * 3
    assert torch.equal(act(x), torch.relu(x))
    assert act.segments == segments


def test_activation_is_the_hinge_sum_and_learns():
    torch.manual_seed(0)
    act = MultiSegmentActivation(6)
    with torch.no_grad():
        for p in act.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(1000) * 3
    ref = act.offset + act.slope0 * x + sum(d * torch.relu(x - b) for d, b in zip(act.deltas, act.breakpoints, strict=True))
    assert torch.allclose(act(x), ref, atol=1e-5)
    act(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in act.parameters())
