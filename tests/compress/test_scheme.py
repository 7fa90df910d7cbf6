import pytest

from automc.catalog import load_catalog
from automc.compress.scheme import apply_scheme
from automc.errors import CompressionError


def test_two_steps_compound_to_the_target(syn_model, syn_task):
    scheme = load_catalog().parse_scheme(
        "NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4, max_layer_prune_ratio=0.9) > "
        "LeGR(target_ratio_factor=1.0, finetune_epochs_factor=0.4, ea_epochs_factor=0.4, max_layer_prune_ratio=0.9)")
    syn_task.target_pr = 0.5
    result = apply_scheme(syn_model, scheme, syn_task)
    assert len(result.steps) == 2
    first = 1 - result.steps[0].measurement.params / result.before.params
    assert abs(first - 0.25) <= 0.03  # half of the target
    assert abs(result.pr - 0.5) <= 0.03  # the second step removes what is left
    assert result.steps[1].ratio > result.steps[0].ratio
    d = result.to_dict()
    assert {"params_before", "params_after", "flops_before", "flops_after", "pr", "fr", "acc_before",
            "acc_after", "ar", "steps"} <= set(d)
    assert d["steps"][0]["strategy"].startswith("NS(") and d["steps"][0]["seconds"] > 0
    assert result.fr > 0 and result.after.flops < result.before.flops


def test_unreachable_step_raises(syn_model, syn_task):
    scheme = load_catalog().parse_scheme("NS(target_ratio_factor=1.0, max_layer_prune_ratio=0.7)")
    syn_task.target_pr = 0.9
    with pytest.raises(CompressionError, match="max_layer_prune_ratio"):
        apply_scheme(syn_model, scheme, syn_task)
