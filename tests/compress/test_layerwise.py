"""Per-layer pruning policies (``compress.layerwise``, the PLP method): exact parameters and FLOPs of a policy
without building it, AMC's clipping bound on a hand-computed case, uniform ratios, criteria, and the policy's text
as a catalogue strategy that ``automc compress --scheme`` applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from automc.catalog import load_catalog
from automc.catalog.policy import format_policy, kept, parse_policy
from automc.compress.layerwise import PolicySpace, apply_policy, channel_plan
from automc.compress.metrics import count_flops, count_params
from automc.compress.models import build_model
from automc.errors import CompressionError, ValidationError

X = torch.randn(1, 3, 32, 32)


class TwoConvs(nn.Module):
    """conv1 3→4 → conv2 4→4 → global pool → linear 4→2, no conv biases: parameter counts easy by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _params_by_hand(n1: int, n2: int) -> int:
    """conv1 27·n1, bn1 2·n1, conv2 9·n1·n2, bn2 2·n2, fc 2·n2 + 2."""
    return 27 * n1 + 2 * n1 + 9 * n1 * n2 + 2 * n2 + 2 * n2 + 2


def test_the_clipping_bound_on_a_hand_computed_case() -> None:
    torch.manual_seed(0)
    space = PolicySpace(TwoConvs(), X)
    assert space.names == ["conv1", "conv2"] and space.base_params == _params_by_hand(4, 4) == 278
    # PR ≥ 0.5: at most floor(278 · 0.5) = 139 parameters. Layer 1 at its floor (1 channel): 38·n1 + 6 ≤ 139,
    # so conv1 keeps at most 3 of 4; then 89 + 31·n2 ≤ 139 leaves conv2 1 channel.
    assert space.wall([], 0.5, min_keep=0.25) == 0.75
    assert space.wall([0.75], 0.5, min_keep=0.25) == 0.25
    assert space.wall([0.5], 0.5, min_keep=0.25) == 0.75  # n1 = 2: 64 + 22·n2 ≤ 139 → n2 = 3
    assert _params_by_hand(2, 3) <= 139 < _params_by_hand(2, 4)
    assert space.clip([1.0, 1.0], 0.5, min_keep=0.25) == (0.75, 0.25)
    with pytest.raises(CompressionError, match="cannot be reached"):
        space.wall([], 0.9, min_keep=0.25)  # even 1 channel each leaves 29 + 9 + 6 = 44 > 27.8


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "vgg11"])
def test_computed_params_and_flops_equal_the_pruned_models(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, width=8) if name != "vgg11" else build_model(name, 10)
    space = PolicySpace(model, X)
    assert space.base_flops == count_flops(model, X) and space.base_params == count_params(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        policy = tuple(rng.uniform(0.05, 1.0, len(space)))
        pruned, record = apply_policy(model, policy, "l1_weight", X)
        assert count_params(pruned) == space.params_of(policy)
        assert count_flops(pruned, X) == space.flops_of(policy)
        assert [len(idx) for _, idx in record] == [c - kept(k, c) for c, k in zip(space.channels, policy,
                                                                                  strict=True) if kept(k, c) < c]
        assert pruned(X).shape == (1, 10)


@pytest.mark.parametrize("target_fr", [None, 0.45])
def test_every_clipped_policy_meets_the_targets_as_computed_and_as_measured(target_fr: float | None) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, width=8)
    space = PolicySpace(model, X)
    rng = np.random.default_rng(1)
    for _ in range(6):
        policy = space.clip(tuple(rng.uniform(0.0, 1.0, len(space))), 0.4, target_fr)
        assert space.meets(policy, 0.4, target_fr)
        pruned, _ = apply_policy(model, policy, "l2_bn", X)
        assert 1 - count_params(pruned) / space.base_params >= 0.4
        if target_fr is not None:
            assert 1 - count_flops(pruned, X) / space.base_flops >= target_fr


def test_uniform_is_the_largest_common_ratio_that_meets_the_target() -> None:
    torch.manual_seed(0)
    space = PolicySpace(build_model("resnet20", 10, width=8), X)
    u = space.uniform(0.4)
    assert space.meets(u, 0.4)
    # one more channel in every layer misses it
    assert not space.meets([min(1.0, (kept(k, c) + 1) / c) for k, c in zip(u, space.channels, strict=True)], 0.4)
    assert max(u) - min(u) <= max(1 / c for c in space.channels) + 1e-9  # one ratio up to channel rounding


def test_the_criterion_decides_which_channels_go() -> None:
    torch.manual_seed(0)
    model = TwoConvs()
    with torch.no_grad():
        model.conv1.weight.mul_(torch.tensor([4.0, 0.1, 3.0, 0.2]).view(4, 1, 1, 1))
        model.bn1.weight.copy_(torch.tensor([0.1, 5.0, 0.2, 4.0]))
    an = PolicySpace(model, X).analysis
    assert channel_plan(an, [0.5, 1.0], "l1_weight") == {"conv1": [1, 3]}
    assert channel_plan(an, [0.5, 1.0], "l2_bn") == {"conv1": [0, 2]}
    with pytest.raises(ValidationError, match="unknown criterion"):
        channel_plan(an, [0.5, 1.0], "nope")


def test_policy_text_round_trips_and_bad_text_names_the_part() -> None:
    policy = (0.59375, 1.0, 0.125, 1 / 3)
    text = format_policy(policy)
    assert text == "0.5938:1:0.125:0.3333"
    assert [kept(k, 32) for k in parse_policy(text)] == [kept(k, 32) for k in policy]
    with pytest.raises(ValidationError, match="keep ratio 2 is 'x'"):
        parse_policy("0.5:x")
    with pytest.raises(ValidationError, match="outside"):
        parse_policy("0.5:0")
    cat = load_catalog()
    s = cat.parse_strategy(f"PLP(layer_keep={text}, filter_criterion=l2_bn)")
    assert s.params["layer_keep"] == text and not cat.in_grid(s) and cat.parse_strategy(s.id) == s
    with pytest.raises(ValidationError, match="layer_keep"):
        cat.parse_strategy("PLP(layer_keep=1.5:1)")


def test_a_stored_policy_applied_by_compress_gives_the_same_shapes(tmp_path) -> None:
    """The text of a found policy, as a scheme of ``automc compress --scheme``, builds the layers it says."""
    from typer.testing import CliRunner

    from automc.cli.app import app
    from automc.compress.data import synthetic

    data = synthetic(num_classes=4, per_class=16, size=16, test_per_class=4, val_fraction=0.0)
    np.savez(tmp_path / "d.npz", x_train=data.x["train"].permute(0, 2, 3, 1).numpy(), y_train=data.y["train"].numpy(),
             x_test=data.x["test"].permute(0, 2, 3, 1).numpy(), y_test=data.y["test"].numpy())
    torch.manual_seed(0)
    model = build_model("resnet20", 4)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.th")
    space = PolicySpace(model, torch.randn(1, 3, 16, 16))  # the data's image size: FLOPs depend on it
    policy = space.clip(tuple(np.random.default_rng(2).uniform(0.2, 1.0, len(space))), 0.4)
    scheme = f"PLP(layer_keep={format_policy(policy)}, filter_criterion=l1_weight, finetune_epochs_factor=0.2, " \
             "target_ratio_factor=1.0)"
    r = CliRunner().invoke(app, ["compress", "--model", "resnet20", "--weights", str(tmp_path / "w.th"), "--data",
                                 str(tmp_path / "d.npz"), "--epochs", "0.5", "--batch-size", "32", "--device", "cpu",
                                 "--target-pr", "0.4", "--scheme", scheme, "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["params_after"] == space.params_of(policy) and out["flops_after"] == space.flops_of(policy)
    from automc.compress.saving import load_compressed

    saved = dict(load_compressed(tmp_path / "o", build_model("resnet20", 4)).named_modules())
    assert [saved[n].out_channels for n in space.names] == [kept(k, c) for k, c in zip(policy, space.channels,
                                                                                        strict=True)]
