"""The search space: rules from catalog.toml's [search] table, extensions, random schemes."""

from __future__ import annotations

import tomllib
from collections import Counter
from importlib import resources

import numpy as np
import pytest

from automc.catalog import Catalog, load_catalog
from automc.errors import NotFoundError, ValidationError
from automc.search.space import SearchSpace


def catalog_with(search: dict) -> Catalog:
    data = tomllib.loads(resources.files("automc.catalog").joinpath("catalog.toml").read_text())
    data["search"] = {**data["search"], **search}
    return Catalog(data)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def sid(space: SearchSpace, text: str) -> str:
    (key,) = space.parse(text)
    return key


def test_default_rules_come_from_the_catalogue(space):
    rules = load_catalog().search_rules
    assert space.max_length == rules.max_length == 5
    assert rules.max_epochs_factor_sum == 4.0
    assert len(space) == len(space.ids) == 8934 == load_catalog().n_strategies()
    assert all(space.index[s] == i for i, s in enumerate(space.ids))
    assert space.strategy(space.ids[7]) is space.strategies[7]
    assert SearchSpace(max_length=2).max_length == 2
    assert rules.not_after == {"LFB": ("LFB",)}  # bench/results/chaining.md
    lfb, ns = sid(space, "LFB"), sid(space, "NS")
    assert space.why_not((lfb, ns, lfb)) == "LFB may not come after LFB" and space.allowed((ns, lfb, ns))


def test_parse_and_schemes(space):
    key = space.parse("NS(target_ratio_factor=0.5) > LFB")
    assert len(key) == 2 and all(k in space.index for k in key)
    assert space.to_scheme(key).text == " > ".join(key)
    assert space.epochs_factor(key[0]) == pytest.approx(space.strategy(key[0]).params["finetune_epochs_factor"])
    hos = sid(space, "HOS(finetune_epochs_factor=1.5, kd_finetune_epochs_factor=1.0)")
    assert space.epochs_factor(hos) == pytest.approx(2.5)
    with pytest.raises(NotFoundError):
        space.strategy("NS(finetune_epochs_factor=0.3,target_ratio_factor=0.5,max_layer_prune_ratio=0.9)")


def test_length_and_epochs_rules(space):
    cheap = sid(space, "NS(finetune_epochs_factor=0.2)")
    assert space.allowed((cheap,) * 5)
    assert "more than the maximum 5" in space.why_not((cheap,) * 6)
    assert SearchSpace(max_length=3).why_not((cheap,) * 4)
    big = sid(space, "HOS(finetune_epochs_factor=1.5, kd_finetune_epochs_factor=0.6)")  # 2.1
    assert space.allowed((big,))
    assert "epochs factors sum to 4.2" in space.why_not((big, big))
    edge = sid(space, "NS(finetune_epochs_factor=1.0)")  # 4 x 1.0 == 4.0 exactly: allowed despite float sums
    assert space.allowed((edge,) * 4)
    assert "not in the catalogue grid" in space.why_not(("NS(bogus=1)",))


def test_order_rules():
    space = SearchSpace(catalog_with({"only_first": ["LMA"], "only_last": ["HOS"], "not_after": {"NS": ["LFB"]}}))
    lma, hos, lfb, ns, sfp = (sid(space, m) for m in ("LMA", "HOS", "LFB", "NS", "SFP"))
    assert space.allowed((lma, ns, hos))
    assert "LMA may only start" in space.why_not((ns, lma))
    assert "nothing may follow HOS" in space.why_not((hos, ns))
    assert "NS may not come after LFB" in space.why_not((lfb, sfp, ns))
    assert space.allowed((ns, lfb))
    assert space.extensions((ns, hos)) == []
    methods = {space.strategy(s).method for s in space.extensions((lfb,))}
    assert methods == {"SFP", "LeGR", "HOS", "LFB"}


@pytest.mark.parametrize("rules", [{}, {"only_first": ["LMA"], "only_last": ["HOS"], "not_after": {"NS": ["LFB"]},
                                        "max_epochs_factor_sum": 3.0}])
def test_extensions_match_allowed(rules):
    space = SearchSpace(catalog_with(rules), max_length=4)
    rng = np.random.default_rng(1)
    prefixes = [(), (sid(space, "HOS(finetune_epochs_factor=1.5, kd_finetune_epochs_factor=0.6)"),)]
    prefixes += [space.random_scheme(rng, n) for n in (1, 2, 3)]
    prefixes.append(space.random_scheme(rng, 4))  # full length: nothing extends it
    for prefix in prefixes:
        ext = space.extensions(prefix)
        expected = [s for s in space.ids if space.allowed((*prefix, s))]
        assert ext == expected
    assert len(prefixes[-1]) == 4 and space.extensions(prefixes[-1]) == []


def test_random_schemes_allowed_deterministic_and_uniform_over_methods():
    space = SearchSpace(catalog_with({"only_last": ["HOS"]}))
    a = [space.random_scheme(np.random.default_rng(5), 5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    firsts = Counter()
    for _ in range(300):
        key = space.random_scheme(rng, 3)
        assert key and 1 <= len(key) <= 3 and space.allowed(key)
        firsts[space.strategy(key[0]).method] += 1
    # LFB has 60 strategies and LeGR 2 304, yet methods are drawn uniformly.
    assert set(firsts) == set(space.methods) and min(firsts.values()) > 25
    assert len(space.random_scheme(rng, 9)) <= space.max_length


def test_random_scheme_stops_when_nothing_can_follow():
    space = SearchSpace(catalog_with({"only_last": ["NS", "SFP", "LeGR", "HOS", "LFB", "LMA"]}))
    assert len(space.random_scheme(np.random.default_rng(0), 4)) == 1
    tight = SearchSpace(catalog_with({"max_epochs_factor_sum": 0.1}))
    assert tight.random_scheme(np.random.default_rng(0), 2) is None


def test_bad_rules_are_rejected():
    with pytest.raises(ValidationError, match="unknown method 'XYZ'"):
        catalog_with({"only_first": ["XYZ"]})
    with pytest.raises(ValidationError, match="unknown method"):
        catalog_with({"not_after": {"XYZ": ["NS"]}})
    with pytest.raises(ValidationError):
        catalog_with({"max_length": 0})
