"""Every registered strategy through the real search loop: exactly its budget in the store, and the same schemes
for the same seed."""

from __future__ import annotations

import pytest

from automc.kb import open_store
from automc.search import STRATEGIES, search
from automc.search._base import search_rows
from tests.search.test_study import config, write_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"), seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_spends_exactly_its_budget_and_repeats_for_a_seed(inputs, tmp_path, strategy):
    schemes = []
    for i in range(2):
        cfg = config(inputs, tmp_path / str(i), strategy=strategy, max_steps=4, per_round=3, seed=5, epochs=0.1)
        res = search(cfg)
        with open_store(cfg.store) as s:
            rows = s.run_evaluations(res.run_id)
        steps = search_rows(rows)  # beside the screenings of a strategy that learns from rung 0 (amc)
        assert res.evaluations == len(steps) == 4
        assert len(rows) == 4 or STRATEGIES[strategy].learns_from_screen
        schemes.append([r["scheme"] for r in rows])
    assert schemes[0] == schemes[1]
