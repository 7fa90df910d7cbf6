"""The catalogue: grid sizes, strategy text round trip, validation against domains."""

from __future__ import annotations

import pytest

from automc.catalog import load_catalog
from automc.errors import NotFoundError, ValidationError


def test_default_grid_has_the_papers_8934_strategies_and_plps_108():
    cat = load_catalog()
    sizes = {m: len(cat.strategies(m)) for m in cat.methods}
    assert sizes == {"LMA": 1728, "LeGR": 1152, "NS": 72, "SFP": 90, "HOS": 5832, "LFB": 60, "PLP": 108}
    assert cat.n_strategies() == 9042
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
    ("NS(target_ratio_factor=0.3, target_ratio_factor=0.9)", "target_ratio_factor: given twice"),
    ("NS(target_ratio_factor=nan)", "outside the domain"),
    ("NS(target_ratio_factor=inf)", "outside the domain"),
    (" " * 60_000, "longer than the 10,000 allowed"),
])
def test_bad_strategies_are_refused(text, match):
    with pytest.raises((ValidationError, NotFoundError), match=match):
        load_catalog().parse_scheme(text)


@pytest.mark.parametrize("text", [
    "NS" + " " * 9_000 + "!",  # two adjacent \s* in the old pattern traded spaces: quadratic backtracking
    "NS(" + " " * 9_000 + ")" + " " * 900 + "!",
    " " * 9_000 + ">" + " " * 900 + "x(",
])
def test_hostile_scheme_text_is_refused_fast(text):
    import time

    t = time.perf_counter()
    with pytest.raises(ValidationError, match="cannot parse strategy"):
        load_catalog().parse_scheme(text)
    assert time.perf_counter() - t < 0.5  # the old parser took ~0.5 s for 9 000 spaces and grew quadratically


def test_scheme_length_cap_leaves_room_for_real_schemes():
    cat = load_catalog()
    longest = " > ".join(max((s.id for s in cat.strategies(m)), key=len) for m in cat.methods)
    assert len(longest) < 10_000 and len(cat.parse_scheme(longest)) == len(cat.methods)


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
