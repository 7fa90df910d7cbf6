"""The catalogue: grid sizes, strategy text round trip, validation against domains."""

from __future__ import annotations

import pytest

from automc.catalog import load_catalog
from automc.errors import NotFoundError, ValidationError


def test_default_grid_has_8934_strategies():
    cat = load_catalog()
    sizes = {m: len(cat.strategies(m)) for m in cat.methods}
    assert sizes == {"LMA": 1728, "LeGR": 1152, "NS": 72, "SFP": 90, "HOS": 5832, "LFB": 60}
    assert cat.n_strategies() == 8934
    ids = [s.id for s in cat.strategies()]
    assert len(set(ids)) == len(ids)


def test_strategy_text_round_trips():
    cat = load_catalog()
    for s in cat.strategies("SFP")[:20] + cat.strategies("LeGR")[-20:]:
        assert cat.parse_strategy(s.id) == s
        assert cat.in_grid(s)


def test_scheme_parsing_fills_defaults_and_is_stable():
    cat = load_catalog()
    scheme = cat.parse_scheme("NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4) > LFB(aux_loss='CE')")
    assert [s.method for s in scheme.strategies] == ["NS", "LFB"]
    assert scheme.strategies[0].params["target_ratio_factor"] == 0.5
    assert scheme.strategies[1].params["aux_loss"] == "CE"
    assert cat.parse_scheme(scheme.text) == scheme
    assert cat.parse_scheme(scheme.text).id == scheme.id


@pytest.mark.parametrize("text, match", [
    ("FOO(a=1)", "unknown method 'FOO'"),
    ("NS(kd_alpha=0.3)", "NS has no hyperparameter 'kd_alpha'"),
    ("NS(max_layer_prune_ratio=1.2)", "outside the domain"),
    ("LFB(aux_loss=MSE)", "outside the domain"),
    ("SFP(sfp_update_every=1.5)", "expected int"),
    ("NS(target_ratio_factor)", "expected name=value"),
    ("", "empty scheme"),
])
def test_bad_strategies_are_refused(text, match):
    with pytest.raises((ValidationError, NotFoundError), match=match):
        load_catalog().parse_scheme(text)


def test_off_grid_value_inside_domain_is_a_valid_strategy():
    cat = load_catalog()
    s = cat.parse_strategy("NS(finetune_epochs_factor=0.26)")
    assert not cat.in_grid(s)


def test_every_catalogue_method_is_implemented_and_tested_and_vice_versa():
    """PyKEEN's test of the tests: catalogue, registry and test modules name the same six methods."""
    from pathlib import Path

    from automc.compress import METHODS

    cat = load_catalog()
    assert set(METHODS) == set(cat.methods)
    for name, cls in METHODS.items():
        assert cls.name == name
    test_text = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "compress").glob("test_*.py"))
    for name, cls in METHODS.items():
        assert cls.__name__ in test_text or f'"{name}"' in test_text, f"no test exercises {name}"
