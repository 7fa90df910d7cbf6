"""``--final-mode``: checked before any work, stored with the run, part of its resume identity, and what the final
fine-tune of a search does; the final evaluation's compute is the total ``--final-epochs`` whatever the scheme."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from automc.cli.app import app
from automc.errors import ValidationError
from automc.kb import open_store
from automc.search import search
from automc.search.config import compare_identity, identity, resolve
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("final-mode-inputs"))


@pytest.fixture(scope="module")
def polished(inputs, tmp_path_factory):
    d = tmp_path_factory.mktemp("polish-run")
    cfg = config(inputs, d, final_epochs=0.6, final_mode="polish", top_k=2, max_steps=4, per_round=2,
                 out=str(d / "out"))
    return cfg, search(cfg)


def test_a_polish_run_stores_its_mode_and_final_models_of_the_same_total(polished):
    cfg, result = polished
    with open_store(cfg.store) as s:
        run = s.load_run(result.run_id)
        rows = s.run_evaluations(result.run_id)
        compute = {r["id"]: r["compute"] for r in s.query(
            "MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(:SearchRun {id: $run}) RETURN e.id AS id, e.compute AS compute",
            {"run": result.run_id})}
    assert run.config["config"]["final_mode"] == "polish" and run.config["identity"]["final_mode"] == "polish"
    finals = [r for r in rows if r["fidelity"] == "final"]
    assert finals and all(r["state"] == "COMPLETE" for r in finals)
    assert all(r["epochs"] == 0.6 and compute[r["id"]] == 0.6 for r in finals)  # the total, whatever the scheme
    assert "model" in result.files  # the best final model was exported (a polished model, rebuilt if needed)


def test_resuming_with_another_final_mode_is_refused(polished):
    cfg, result = polished
    with pytest.raises(ValidationError, match="another final-mode"):
        search(dataclasses.replace(cfg, resume=result.run_id, final_mode="reapply"))


def test_a_run_stored_before_final_mode_existed_resumes_as_reapply(inputs, tmp_path):
    cfg = resolve(config(inputs, tmp_path), None)
    old = {k: v for k, v in identity(cfg).items() if k != "final_mode"}  # what such a run stored
    stored_config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "final_mode"}
    again = resolve(dataclasses.replace(config(inputs, tmp_path), final_mode=None), stored_config)
    assert again.final_mode == "reapply"
    compare_identity("r", old, identity(again))
    with pytest.raises(ValidationError, match="final-mode"):
        compare_identity("r", old, identity(dataclasses.replace(again, final_mode="polish")))


def test_a_bad_final_mode_is_one_error_line_naming_the_flag(inputs, tmp_path):
    data, weights = inputs
    r = CliRunner().invoke(app, ["search", "--model", "resnet8", "--width", "4", "--weights", str(weights), "--data",
                                 str(data), "--final-mode", "again", "--store", f"ladybug://{tmp_path / 'kb'}",
                                 "--cache-dir", str(tmp_path / "cache")])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code not in (0, None) and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "--final-mode" in lines[0] and "reapply, polish" in lines[0]
    assert not (tmp_path / "kb").exists() and not (tmp_path / "cache").exists()


def test_resuming_a_complete_polish_run_into_a_new_out_rebuilds_the_polished_model(polished, tmp_path):
    cfg, result = polished
    assert not (Path(cfg.cache_dir) / "cache").exists()  # the model cache went at COMPLETE: nothing to copy
    again = search(dataclasses.replace(cfg, resume=result.run_id, out=str(tmp_path / "out2")))
    # rebuilt from a replayed searched model and polished again: it must measure the recorded validation accuracy
    assert "model" in again.files and "could not be rebuilt" not in again.message
    first, second = (json.loads((Path(d) / "model" / "architecture.json").read_text())["extra"]
                     for d in (cfg.out, tmp_path / "out2"))
    assert first == second
