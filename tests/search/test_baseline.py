"""The report says whether the search was worth it: the same final fine-tune applied to one reference scheme
(``--baseline``, by default the knowledge base's choice), stored at fidelity "baseline", compared with the found model
by the exact McNemar test on the same test images; ``--baseline none`` skips it. Real store, tiny ResNet, synthetic
data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from automc.catalog import load_catalog, scheme_text
from automc.cli.app import app
from automc.compress.paired import compare_evaluations
from automc.errors import ValidationError
from automc.importers import import_file
from automc.kb import open_store
from automc.kb.records import TaskFeatures
from automc.search import SearchConfig, search
from automc.search.final import kb_baseline
from automc.search.report import build_report, render_markdown, report_info
from automc.search.space import SearchSpace
from automc.search.step import step_seed
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)
runner = CliRunner()

BASELINE = "SFP(target_ratio_factor=1.0)"
HEADER = ("method,model,dataset,hyperparameters,flops_reduction,accuracy_change,base_top1,base_params_m,"
          "base_flops_m,num_classes,num_images,image_size,image_channels,source\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("baseline-inputs"))


def _searched(inputs, d: Path, *, out: bool = False, **kw):
    """A 3-step search with a final fine-tune of its best scheme (and a report folder with ``out``: slower, since
    the model is exported)."""
    cfg = config(inputs, d, max_steps=3, final_epochs=0.3, top_k=1, out=str(d / "out") if out else None, **kw)
    return cfg, search(cfg)


@pytest.fixture(scope="module")
def with_baseline(inputs, tmp_path_factory):
    return _searched(inputs, tmp_path_factory.mktemp("with-baseline"), out=True, baseline=BASELINE)


def _rows(cfg, run_id):
    with open_store(cfg.store) as s:
        return s.run_evaluations(run_id), {r["id"]: r for r in s.named("test-records", {"run": run_id})}


def test_the_baseline_gets_the_final_budget_and_the_report_its_paired_test(with_baseline):
    cfg, result = with_baseline
    rows, records = _rows(cfg, result.run_id)
    baselines = [r for r in rows if r["fidelity"] == "baseline"]
    finals = [r for r in rows if r["fidelity"] == "final"]
    assert len(baselines) == 1 and len(finals) == 1
    b, key = baselines[0], load_catalog().parse_scheme(BASELINE).key
    assert b["state"] == "COMPLETE" and b["scheme"] == scheme_text(key)
    # the same final fine-tune as the found model's: epochs, all the training data, the run's per-step seeds
    assert (b["epochs"], b["data_fraction"]) == (finals[0]["epochs"], finals[0]["data_fraction"]) == (0.3, 1.0)
    assert b["seed"] == step_seed(0, key)  # the run's seed (the default, 0) and the scheme, as a final's
    report = result.baseline
    assert report["evaluation_id"] == b["id"] and report["test_accuracy"] == b["accuracy"]
    assert (report["pr"], report["fr"]) == (b["pr"], b["fr"]) and b["pr"] >= cfg.target_pr - 0.03
    paired = report["paired"]
    assert paired["found_evaluation_id"] == finals[0]["id"] == result.front[0]["evaluation_id"]
    assert records[b["id"]]["test_ids_hash"] == records[finals[0]["id"]]["test_ids_hash"]
    m = compare_evaluations(records[finals[0]["id"]], records[b["id"]])
    assert (paired["only_found"], paired["only_baseline"], paired["images"], paired["p_value"]) == (
        m.b10, m.b01, m.n, m.p_value)
    verdict = "not distinguishable" if m.p_value >= 0.05 else "better" if m.b10 > m.b01 else "worse"
    assert paired["verdict"] == verdict
    assert report["summary"].startswith(f"the search's model ({finals[0]['accuracy']:.2%}) is {verdict}")
    assert f"p = {m.p_value:.3g}" in report["summary"] and b["scheme"] in report["summary"]
    # in every output: search.json, report.md and the CLI's summary (rebuilt from the store alone)
    out = Path(cfg.out)
    assert json.loads((out / "search.json").read_text())["baseline"]["summary"] == report["summary"]
    assert report["summary"] in (out / "report.md").read_text()
    r = runner.invoke(app, ["report", result.run_id, "--store", cfg.store])
    assert r.exit_code == 0, r.output
    assert "baseline: the search's model" in r.stdout and f"p = {m.p_value:.3g}" in r.stdout


def test_no_paired_test_on_other_test_images(with_baseline):
    cfg, result = with_baseline
    rows, records = _rows(cfg, result.run_id)
    with open_store(cfg.store) as s:
        run = s.load_run(result.run_id)
    bid = result.baseline["evaluation_id"]
    assert report_info(run, rows, list(records.values())).baseline["paired"] is not None
    records[bid] = {**records[bid], "test_ids_hash": "0" * 32}  # as if measured on another test split
    shown = report_info(run, rows, list(records.values())).baseline
    assert shown["paired"] is None and "tested on different test images" in shown["summary"]
    assert shown["test_accuracy"] == result.baseline["test_accuracy"]


def test_the_baseline_is_never_the_reported_best_model(with_baseline):
    cfg, result = with_baseline
    bid = result.baseline["evaluation_id"]
    assert all(row["evaluation_id"] != bid and row["fidelity"] != "baseline" for row in result.front)
    exported = json.loads((Path(cfg.out) / "model" / "architecture.json").read_text())["extra"]["evaluation_id"]
    assert exported == result.baseline["paired"]["found_evaluation_id"] != bid


def test_resume_after_the_baseline_does_not_run_it_again(with_baseline):
    cfg, result = with_baseline
    before, _ = _rows(cfg, result.run_id)
    again = search(SearchConfig(resume=result.run_id, store=cfg.store, device="cpu"))
    after, _ = _rows(cfg, result.run_id)
    assert [r["id"] for r in after if r["fidelity"] == "baseline"] == [result.baseline["evaluation_id"]]
    assert len(after) == len(before)
    assert again.baseline["summary"] == result.baseline["summary"]


@pytest.mark.slow
def test_baseline_none_stores_none(inputs, tmp_path):
    cfg, result = _searched(inputs, tmp_path, baseline="none")
    rows, _ = _rows(cfg, result.run_id)
    assert [r["fidelity"] for r in rows if r["fidelity"] != "search"] == ["final"]
    assert result.baseline == {}
    with open_store(cfg.store) as s:
        info = build_report(s, result.run_id)
    assert info.baseline is None and "worth it" not in render_markdown(info)


@pytest.mark.parametrize(("text", "message"), [
    ("SFP(target_ratio_factor=0.77)", "target_ratio_factor=0.77 is not one of"),
    ("Nope()", "unknown method 'Nope'"),
    ("SFP(target_ratio_factor=1.0) > LMA(", "cannot parse strategy 'LMA\\('"),
])
def test_a_bad_baseline_is_one_error_naming_the_flag_before_any_work(inputs, tmp_path, text, message):
    cfg = config(inputs, tmp_path, final_epochs=0.3, top_k=1, baseline=text)
    open_store(cfg.store).close()
    with pytest.raises(ValidationError, match=f"^--baseline: .*({message})"):
        search(cfg)
    with open_store(cfg.store) as s:
        assert s.list_runs() == []
    assert not (tmp_path / "cache").exists()


def test_cli_refuses_a_bad_or_ineffective_baseline_in_one_line(inputs, tmp_path):
    data, weights = inputs
    args = ["search", "--model", "resnet8", "--width", "4", "--weights", str(weights), "--data", str(data),
            "--strategy", "random", "--no-reuse", "--device", "cpu", "--store", f"ladybug://{tmp_path / 'kb'}",
            "--cache-dir", str(tmp_path / "cache")]
    for extra, prefix in ((["--baseline", "Nope()"], "error: --baseline: unknown method 'Nope'"),
                          (["--baseline", BASELINE, "--final-epochs", "0"], "error: --baseline: the baseline gets")):
        r = runner.invoke(app, [*args, *extra])
        assert r.exit_code not in (0, None) and (r.exception is None or isinstance(r.exception, SystemExit))
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    assert not (tmp_path / "cache").exists()


# -- the knowledge base's choice --------------------------------------------------------------------------------

def _strategy(method: str, **fixed):
    """A grid strategy of ``method`` that reaches the target in one step."""
    return next(s for s in load_catalog().strategies(method)
                if s.params.get("target_ratio_factor", 1.0) == 1.0 and fixed.items() <= s.params.items())


def _row(params: dict, method: str, ar: float, pr: float, task: str) -> str:
    hps = json.dumps({**params, "reduction_ratio": pr}).replace('"', '""')
    features = {"near": "resnet8,tiny,0.8,0.005,0.5,4,128,16,3", "far": "resnet56,cifar10,0.93,0.85,125,10,50000,32,3"}
    model, dataset, *numbers = features[task].split(",")
    return (f'{method},{model},{dataset},"{hps}",0.3,{ar},{numbers[0]},{numbers[1]},{numbers[2]},{numbers[3]},'
            f'{numbers[4]},{numbers[5]},{numbers[6]},planted {task} {method}\n')


def _plant(path: Path, store) -> dict[str, str]:
    """Experiences on a task like the tests' and on a CIFAR-10 one; returns the strategies by role."""
    best, worse, short, far = _strategy("LMA"), _strategy("NS"), _strategy("SFP"), _strategy("HOS")
    rows = [_row(best.params, "LMA", -0.01, 0.45, "near"),
            _row(best.params, "LMA", -0.20, 0.42, "near"),  # rated by its best result, not dragged down by this
            _row(worse.params, "NS", -0.05, 0.42, "near"),
            _row(short.params, "SFP", +0.02, 0.30, "near"),  # the best change, but short of the target
            _row({**_strategy("LFB").params, "aux_loss_factor": 0.77}, "LFB", +0.05, 0.5, "near"),  # off the grid
            _row(far.params, "HOS", +0.03, 0.50, "far")]  # better still, on a task unlike this one
    path.write_text(HEADER + "".join(rows))
    import_file(store, path)
    return {"best": best.id, "far": far.id}


def test_kb_choice_is_the_best_rated_single_method_reaching_gamma_on_the_most_similar_task(kb_copy, tmp_path):
    task = TaskFeatures("resnet8", "mine", 4, 16, 3, 128, 0.75, 4_800.0, 400_000.0)
    space = SearchSpace()
    with open_store(f"ladybug://{kb_copy}") as s:  # the catalogue, the paper's tables, the measured experience
        planted = _plant(tmp_path / "planted.csv", s)
        key, why = kb_baseline(s, task, 0.4, space)
        assert key == (planted["best"],)
        assert "resnet8, tiny" in why and "-1.00%" in why and "best of 2" in why and "planted near LMA" in why
        # a CIFAR-10 task is most like the far one, whose only strategy reaching 0.45 is HOS
        cifar = TaskFeatures("resnet56", "cifar10", 10, 32, 3, 50_000, 0.93, 850_000.0, 125e6)
        assert kb_baseline(s, cifar, 0.45, space)[0] == (planted["far"],)
        assert kb_baseline(s, task, 0.9, space) is None  # nothing reaches 0.9: the search falls back


@pytest.mark.slow
def test_a_search_takes_the_kb_choice_by_default(inputs, kb_copy, tmp_path):
    with open_store(f"ladybug://{kb_copy}") as s:
        planted = _plant(tmp_path / "planted.csv", s)
    cfg = config(inputs, tmp_path, max_steps=2, final_epochs=0.3, top_k=1, store=f"ladybug://{kb_copy}")
    result = search(cfg)
    rows, _ = _rows(cfg, result.run_id)
    assert [r["scheme"] for r in rows if r["fidelity"] == "baseline"] == [planted["best"]]
    assert result.baseline["why"].startswith("chosen by the knowledge base") and result.baseline["paired"]
