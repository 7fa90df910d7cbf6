"""One scheme spelling: the catalogue owns the separator, the text of a key, its parser and the content id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import automc
from automc.catalog import SCHEME_SEP, Scheme, load_catalog, scheme_id, scheme_key, scheme_text
from automc.search import evaluator

SCHEMES = ["NS(target_ratio_factor=0.5) > LFB(aux_loss='CE')", "SFP", "LeGR > NS > SFP"]


def _schemes() -> list[Scheme]:
    cat = load_catalog()
    return [Scheme(())] + [cat.parse_scheme(t) for t in SCHEMES]


@pytest.mark.parametrize("scheme", _schemes(), ids=lambda s: s.text or "empty")
def test_catalogue_and_search_give_one_id_and_round_trip(scheme):
    key = scheme.key
    assert key == tuple(s.id for s in scheme.strategies)
    assert evaluator.scheme_id(key) == scheme_id(key) == scheme.id
    assert scheme_text(key) == scheme.text
    assert scheme_key(scheme.text) == key
    assert scheme_text(scheme_key(scheme.text)) == scheme.text


def test_ids_are_the_stored_ones():
    """Cache files and ``Evaluation.scheme_id`` / ``parent`` are keyed by these: the hash input must not change."""
    cat = load_catalog()
    assert Scheme(()).id == scheme_id(()) == "e3b0c44298fc1c14"  # sha256 of "", the parent of a first step
    assert cat.parse_scheme(SCHEMES[0]).id == "7775fd24a5e36336"
    assert cat.parse_scheme("SFP").id == "32a8dd4523b2dcad"
    assert SCHEME_SEP == " > " and scheme_key(None) == scheme_key("") == ()


def test_separator_is_written_only_in_the_catalogue():
    root = Path(automc.__file__).parent
    literal = re.compile(r"""(["'])\s*>\s*\1""")  # " > " or ' > ' (or a spacing variant) as a string literal
    found = [f"{p.relative_to(root.parent)}:{i}: {line.strip()}"
             for p in sorted(root.rglob("*.py")) if "catalog" not in p.relative_to(root).parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []
