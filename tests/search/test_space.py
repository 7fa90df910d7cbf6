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
    data["search"] = {**data["search"], "exclude": [], **search}
    return Catalog(data)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    """The catalogue's rules over every method (the rules' tests below; the exclusion has its own)."""
    return SearchSpace(exclude=())


def test_excluded_methods_are_never_proposed_but_stay_in_the_catalogue():
    """catalog.toml's ``[search] exclude`` (LFB, a measured dominated region): no scheme with it is allowed, no
    extension, closer or random scheme uses it, no scheme needs it to close; the grid keeps its strategies."""
    space = SearchSpace()
    assert space.excluded == {"LFB"} == set(load_catalog().search_rules.exclude)
    lfb = sid(space, "LFB")
    assert lfb in space.index and space.strategy(lfb).method == "LFB"
    assert space.why_not((lfb,)) == "LFB is excluded from the search (catalog.toml [search] exclude)"
    assert space.why_not((sid(space, "NS(target_ratio_factor=0.3)"), lfb)).startswith("LFB is excluded")
    assert SearchSpace(exclude=()).allowed((lfb,))
    rng = np.random.default_rng(0)
    used = set()
    for _ in range(300):
        key = space.random_scheme(rng, int(rng.integers(1, 4)))
        assert key and space.feasible(key)
        used |= {space.strategy(s).method for s in key}
        used |= {space.strategy(s).method for s in space.extensions(key[:-1]) + space.closers(key[:-1])}
    assert "LFB" not in used and used == set(space.methods) - {"LFB"}
    with pytest.raises(ValidationError, match="search.exclude"):
        catalog_with({"exclude": ["NoSuchMethod"]})


def sid(space: SearchSpace, text: str) -> str:
    (key,) = space.parse(text)
    return key


def test_default_rules_come_from_the_catalogue(space):
    rules = load_catalog().search_rules
    assert space.max_length == rules.max_length == 5
    assert rules.max_epochs_factor_sum == 4.0
    assert len(space) == len(space.ids) == 9042 == load_catalog().n_strategies()
    assert all(space.index[s] == i for i, s in enumerate(space.ids))
    assert space.strategy(space.ids[7]) is space.strategies[7]
    assert SearchSpace(max_length=2).max_length == 2
    assert rules.not_after == {"LFB": ("LFB",)}  # bench/results/chaining.md
    lfb, ns = sid(space, "LFB"), sid(space, "NS(target_ratio_factor=0.3)")
    assert space.why_not((lfb, ns, lfb)) == "LFB may not come after LFB" and space.allowed((ns, lfb))


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
    cheap = sid(space, "NS(finetune_epochs_factor=0.2, target_ratio_factor=0.1)")
    close = sid(space, "NS(finetune_epochs_factor=0.2, target_ratio_factor=0.7)")
    assert space.allowed((cheap,) * 4) and space.feasible((cheap,) * 3 + (close,))
    assert "more than the maximum 5" in space.why_not((cheap,) * 6)
    assert space.why_not((cheap,) * 5) == "it reaches 0.5 of the target and no allowed step can close it"
    assert SearchSpace(max_length=3).why_not((cheap,) * 4)
    big = sid(space, "HOS(finetune_epochs_factor=1.5, kd_finetune_epochs_factor=0.6, target_ratio_factor=0.3)")
    assert space.allowed((big,)) and not space.closed((big,))  # 2.1 of the 4.0: room to close
    assert "epochs factors sum to 4.2" in space.why_not((big, big))
    edge = sid(space, "NS(finetune_epochs_factor=1.0, target_ratio_factor=0.1)")  # 4 x 1.0 == 4.0 exactly
    last = sid(space, "NS(finetune_epochs_factor=1.0, target_ratio_factor=0.7)")
    assert space.feasible((edge,) * 3 + (last,))
    assert "not in the catalogue grid" in space.why_not(("NS(bogus=1)",))


def test_order_rules():
    space = SearchSpace(catalog_with({"only_first": ["LMA"], "only_last": ["HOS"], "not_after": {"NS": ["SFP"]}}))
    lma, hos, lfb, ns, sfp = (sid(space, m) for m in (
        "LMA(target_ratio_factor=0.1)", "HOS(target_ratio_factor=0.7)", "LFB", "NS(target_ratio_factor=0.3)",
        "SFP(target_ratio_factor=0.1)"))
    assert space.feasible((lma, ns, hos))
    assert "LMA may only start" in space.why_not((ns, lma))
    assert "nothing may follow HOS" in space.why_not((hos, ns))
    assert "NS may not come after SFP" in space.why_not((sfp, lfb, ns))
    assert space.feasible((ns, lfb))
    assert space.extensions((ns, hos)) == []  # closed: it reaches the target
    methods = {space.strategy(s).method for s in space.extensions((sfp,))}
    assert methods == {"SFP", "LeGR", "HOS", "LFB", "PLP"}
    # HOS may only end a scheme: a HOS step that does not reach the target cannot start one
    assert "no allowed step can close it" in space.why_not((hos,))


@pytest.mark.parametrize("rules", [{}, {"only_first": ["LMA"], "only_last": ["HOS"], "not_after": {"NS": ["LFB"]},
                                        "max_epochs_factor_sum": 3.0}])
def test_extensions_match_allowed(rules):
    space = SearchSpace(catalog_with(rules), max_length=4)
    rng = np.random.default_rng(1)
    prefixes = [(), (sid(space, "HOS(finetune_epochs_factor=1.5, kd_finetune_epochs_factor=0.6, "
                             "target_ratio_factor=0.3)"),)]
    prefixes += [space.random_scheme(rng, n)[:-1] for n in (2, 3, 4)]  # open prefixes of feasible schemes
    prefixes.append(space.random_scheme(rng, 4))  # closed: nothing extends it
    for prefix in prefixes:
        ext = space.extensions(prefix)
        expected = [s for s in space.ids if space.allowed((*prefix, s))]
        assert ext == expected
        assert space.closers(prefix) == [s for s in expected if space.closed((*prefix, s))]
    assert space.closed(prefixes[-1]) and space.extensions(prefixes[-1]) == []


def test_random_schemes_allowed_deterministic_and_uniform_over_methods():
    space = SearchSpace(catalog_with({"only_last": ["HOS"]}))
    a = [space.random_scheme(np.random.default_rng(5), 5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    firsts = Counter()
    for _ in range(300):
        key = space.random_scheme(rng, 3)
        assert key and 1 <= len(key) <= 3 and space.feasible(key)
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


def test_shares_are_absolute_and_the_last_step_closes_the_target(space):
    ns = {v: sid(space, f"NS(target_ratio_factor={v})") for v in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    assert space.share((ns[0.3], ns[0.5])) == pytest.approx(0.8) and not space.closed((ns[0.3], ns[0.5]))
    assert space.pr((ns[0.3], ns[0.7]), 0.4) == pytest.approx(0.4) and space.feasible((ns[0.3], ns[0.7]))
    assert space.pr((ns[0.3],), 0.4) == pytest.approx(0.12)
    # the closing step asks the smallest share of its method's grid that closes: 0.9 after 0.3 would be 0.7's model
    assert "NS closes it with target_ratio_factor=0.7" in space.why_not((ns[0.3], ns[0.9]))
    assert space.closing((ns[0.3],), ns[0.9]) == ns[0.7] and space.closing((ns[0.3],), ns[0.5]) == ns[0.5]
    sfp9 = sid(space, "SFP(target_ratio_factor=0.9)")  # SFP's grid has no 0.7: 0.9 is its closer after 0.3
    assert space.feasible((ns[0.3], sfp9))
    assert "reaches the target at step 2" in space.why_not((ns[0.3], ns[0.7], ns[0.1]))
    closers = space.closers((ns[0.3],))
    assert closers and all(space.feasible((ns[0.3], c)) for c in closers)
    assert {space.strategy(c).params["target_ratio_factor"] for c in closers} == {0.7, 0.9, 1.0}  # SFP 0.9, LFB 1.0


def test_step_ratio_removes_a_share_of_the_target_and_closes_it_exactly():
    from automc.compress.base import step_ratio

    p0 = 1000
    assert step_ratio(0.4, p0, p0, 0.5) == pytest.approx(0.2)  # 0.5 of gamma, of the original
    assert step_ratio(0.4, p0, 800, 0.5) * 800 == pytest.approx(200)  # the second half: 200 of 800 left
    assert step_ratio(0.4, p0, 800, 1.0) * 800 == pytest.approx(200)  # never beyond gamma
    assert step_ratio(0.4, p0, 605, 0.7) * 605 == pytest.approx(5)  # rounding of earlier steps made up
    assert step_ratio(0.4, p0, 600, 0.3) == 0.0  # after gamma a step removes nothing


@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_random_schemes_reach_the_target(space, length):
    rng = np.random.default_rng(length)
    for _ in range(40):
        key = space.random_scheme(rng, length)
        assert key is not None and len(key) <= length and space.feasible(key)
        assert space.pr(key, 0.4) == pytest.approx(0.4)
        assert all(not space.closed(key[:i]) for i in range(1, len(key)))
