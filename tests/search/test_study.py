"""The search loop on a real store, a tiny ResNet and synthetic data: budget, links, front, report, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from automc.catalog import Scheme, scheme_key, scheme_text
from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.models import build_model
from automc.compress.train import finetune
from automc.errors import NotFoundError, ValidationError
from automc.kb import open_store
from automc.search import STRATEGIES, SearchConfig, SearchInterrupted, search
from automc.search._base import Context, History, Observation, search_rows
from automc.search.random import RandomStrategy
from automc.search.report import build_report

torch.set_num_threads(1)


def write_inputs(d: Path, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic 4-class .npz and the weights of a ResNet-8 of width 4 trained on it."""
    data = synthetic(num_classes=4, per_class=32, size=16, test_per_class=16, val_fraction=0.0, seed=seed)
    path = d / f"data{seed}.npz"
    np.savez(path, x_train=data.x["train"].permute(0, 2, 3, 1).numpy(), y_train=data.y["train"].numpy(),
             x_test=data.x["test"].permute(0, 2, 3, 1).numpy(), y_test=data.y["test"].numpy())
    torch.manual_seed(seed)
    model = build_model("resnet8", 4, width=4)
    finetune(model, Task(data, 0.4, TrainBudget(epochs=6, batch_size=32, lr=0.05)), 6)
    weights = d / f"w{seed}.pt"
    torch.save(model.state_dict(), weights)
    return path, weights


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def config(inputs, tmp_path, **kw) -> SearchConfig:
    data, weights = inputs
    # a compute budget that never binds: these tests count steps (--max-steps)
    base = {"model": "resnet8", "width": 4, "data": str(data), "weights": str(weights), "target_pr": 0.4,
            "budget": 1000.0, "max_steps": 5, "epochs": 0.3, "final_epochs": 0, "strategy": "random", "reuse": False,
            "per_round": 3, "max_length": 2, "batch_size": 32, "lr": 0.05, "device": "cpu",
            "store": f"ladybug://{tmp_path / 'kb'}", "cache_dir": str(tmp_path / "cache")}
    return SearchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """One complete search (budget 5, a final fine-tune of the best front scheme, a report directory)."""
    d = tmp_path_factory.mktemp("run")
    events = []
    cfg = config(inputs, d, final_epochs=0.3, top_k=1, out=str(d / "out"), data_fraction=0.5)
    return cfg, search(cfg, progress=events.append), events


def _rows(cfg, run_id):
    with open_store(cfg.store) as s:
        return s.run_evaluations(run_id)


def test_budget_counts_steps_all_linked_to_run_and_parent(finished):
    cfg, result, events = finished
    rows = _rows(cfg, result.run_id)
    steps = search_rows(rows)
    assert len(steps) == cfg.max_steps == result.evaluations
    assert [e.done for e in events if e.kind == "step"] == list(range(1, cfg.max_steps + 1))
    # the store gives the steps back in evaluation order (what a resumed run rebuilds its history from)
    assert [e.message.split(" ", 1)[1] for e in events if e.kind == "step"] == [r["scheme"] for r in steps]
    with open_store(cfg.store) as s:
        linked = s.query("MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(:SearchRun {id: $r}) MATCH (e)-[:EVAL_OF_SCHEME]->"
                         "(x:Scheme) MATCH (x)-[:EXTENDS]->(p:Scheme) RETURN e.id AS e, e.parent AS parent, "
                         "p.id AS p, p.text AS ptext, x.text AS text", {"r": result.run_id})
        run = s.load_run(result.run_id)
    assert {r["e"] for r in linked} == {r["id"] for r in rows}
    for r in linked:
        assert r["parent"] == r["p"]
        assert r["ptext"] == scheme_text(scheme_key(r["text"])[:-1])
    assert Scheme(()).id in {r["p"] for r in linked}
    assert run.state == "COMPLETE" and run.round >= 0 and run.seconds > 0
    # every step's parent was evaluated before it (or is the base model)
    seen = {()}
    for r in steps:
        key = scheme_key(r["scheme"])
        assert key[:-1] in seen
        seen.add(key)


def test_front_reaches_gamma_and_is_non_dominated(finished):
    cfg, result, _ = finished
    points = [r for r in search_rows(_rows(cfg, result.run_id)) if r["state"] == "COMPLETE"]
    assert result.front, "a 5-step search on this task reaches PR 0.4"
    for row in result.front:
        assert row["search_pr"] >= cfg.target_pr and row["pr"] >= cfg.target_pr - 0.03
        dominated = [p for p in points if p["pr"] >= cfg.target_pr and p["val_accuracy"] >= row["search_val_accuracy"]
                     and p["pr"] >= row["search_pr"] and (p["val_accuracy"], p["pr"]) != (row["search_val_accuracy"],
                                                                                          row["search_pr"])]
        assert not dominated
    reached = [p for p in points if p["pr"] >= cfg.target_pr]
    best = max(p["val_accuracy"] for p in reached)
    assert max(r["search_val_accuracy"] for r in result.front) == best


def test_report_from_the_store_reproduces_the_front(finished, tmp_path):
    cfg, result, _ = finished
    with open_store(cfg.store) as s:
        info = build_report(s, result.run_id)
        stored = s.load_run(result.run_id).front
    assert info.front == result.front == stored
    assert info.evaluations == result.evaluations
    out = Path(cfg.out)
    for name in ("report.md", "pareto.png", "search.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "model" / "architecture.json").is_file()
    text = (out / "report.md").read_text()
    assert all(row["evaluation_id"] in text for row in result.front)


def test_final_fine_tune_is_stored_at_its_own_fidelity(finished):
    cfg, result, _ = finished
    rows = _rows(cfg, result.run_id)
    finals = [r for r in rows if r["fidelity"] == "final"]
    assert len(finals) == 1 and finals[0]["data_fraction"] == 1.0 and finals[0]["epochs"] == cfg.final_epochs
    steps = search_rows(rows)
    assert {(r["data_fraction"], r["epochs"]) for r in steps} == {(0.5, cfg.epochs)}
    # every step selected on the same validation images, which are none of the test images
    assert len({r["val_source"] for r in rows}) == 1 and "half 1 of 2" in rows[0]["val_source"]
    best = max(result.front, key=lambda r: r["search_val_accuracy"])
    assert best["fidelity"] == "final" and best["evaluation_id"] == finals[0]["id"]


class Recording(RandomStrategy):
    """Random search that keeps what the loop hands it."""

    name = "recording"
    seen: list = []
    contexts: list = []

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        Recording.contexts.append(context)

    def propose(self, history, n, rng):
        Recording.seen.append(history)
        return super().propose(history, n, rng)


@pytest.mark.slow
def test_no_strategy_can_read_test_accuracy(inputs, tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES._paths, "recording", f"{__name__}:Recording")
    monkeypatch.setattr(Recording, "seen", [])
    monkeypatch.setattr(Recording, "contexts", [])
    result = search(config(inputs, tmp_path, strategy="recording", max_steps=3, per_round=1))
    names = {f.name for f in dataclasses.fields(Observation)}
    assert not {n for n in names if "test" in n or n in ("accuracy", "accuracy_low", "accuracy_high", "ar")}
    assert Recording.seen and all(isinstance(h, History) for h in Recording.seen)
    for h in Recording.seen:
        assert all(type(o) is Observation for o in [h.base, *h])
    ctx = Recording.contexts[0]
    # the only accuracy of the task a strategy gets is the base model's validation accuracy
    assert ctx.task.base_accuracy == Recording.seen[-1].base.val_accuracy
    rows = _rows(config(inputs, tmp_path), result.run_id)
    tested = {r["id"]: r["accuracy"] for r in rows}
    assert all(o.evaluation_id in tested for o in Recording.seen[-1])


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"target_pr": 1.0}, ValidationError, "--target-pr"),
    ({"target_pr": 0.0}, ValidationError, "--target-pr"),
    ({"budget": 0}, ValidationError, "--budget"),
    ({"strategy": "nope"}, ValidationError, "unknown strategy 'nope'"),
    ({"resume": "nope"}, NotFoundError, "no search run 'nope'"),
    ({"data": "/nonexistent.npz"}, ValidationError, "data path not found"),
])
def test_bad_input_writes_nothing(inputs, tmp_path, change, error, message):
    cfg = config(inputs, tmp_path, **change)
    open_store(cfg.store).close()  # an existing, empty store
    with pytest.raises(error, match=message.replace("(", r"\(")):
        search(cfg)
    with open_store(cfg.store) as s:
        assert s.list_runs() == []
    assert not (tmp_path / "cache").exists()


def test_validation_data_with_other_classes_is_refused(inputs, tmp_path):
    val = tmp_path / "val.npz"
    rng = np.random.default_rng(0)
    np.savez(val, x_val=rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), y_val=np.arange(12) % 6)
    cfg = config(inputs, tmp_path, val_data=str(val))
    open_store(cfg.store).close()
    with pytest.raises(ValidationError, match="class"):
        search(cfg)
    with open_store(cfg.store) as s:
        assert s.list_runs() == []


def test_resume_of_a_run_on_other_data_is_refused(finished, inputs, tmp_path_factory):
    cfg, result, _ = finished
    other, _ = write_inputs(tmp_path_factory.mktemp("other"), seed=1)
    with open_store(cfg.store) as s:
        before = s.list_runs()
    for change in ({"data": str(other)}, {"target_pr": 0.5}, {"model": "resnet14"}):
        with pytest.raises(ValidationError, match="was started with another"):
            search(dataclasses.replace(cfg, resume=result.run_id, **change))
    with open_store(cfg.store) as s:
        assert s.list_runs() == before


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_the_budget(inputs, tmp_path):
    cfg = config(inputs, tmp_path, max_steps=4, per_round=2)

    def stop(event):
        if event.kind == "step" and event.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(SearchInterrupted, match=r"automc search --resume \w+ --store") as info:
        search(cfg, progress=stop)
    run_id = info.value.run_id
    with open_store(cfg.store) as s:
        run = s.load_run(run_id)
        assert run.state == "INTERRUPTED"
        assert len(search_rows(s.run_evaluations(run_id))) == 2
    result = search(SearchConfig(resume=run_id, store=cfg.store, device="cpu"))
    rows = _rows(cfg, run_id)
    assert result.run_id == run_id and result.evaluations == 4 == len(search_rows(rows))
    assert all(r["state"] != "RUNNING" for r in rows)
    with open_store(cfg.store) as s:
        assert s.load_run(run_id).state == "COMPLETE"


def test_resume_in_a_missing_store_creates_none(inputs, tmp_path):
    with pytest.raises(NotFoundError, match="no knowledge base"):
        search(config(inputs, tmp_path, resume="nope"))
    assert not (tmp_path / "kb").exists()


def test_time_limit_stops_the_search(inputs, tmp_path):
    result = search(config(inputs, tmp_path, time_limit=1e-3))
    assert result.state == "COMPLETE" and result.evaluations == 0 and result.message == "time limit reached"


@pytest.mark.slow
def test_a_search_on_another_task_learns_from_the_first_only_with_reuse(inputs, tmp_path, tmp_path_factory):
    first = search(config(inputs, tmp_path, max_steps=3))
    other = write_inputs(tmp_path_factory.mktemp("other-task"), seed=1)
    learnt = search(config(other, tmp_path, strategy="progressive", reuse=True, max_steps=2, per_round=2,
                           cache_dir=str(tmp_path / "cache2")))
    assert learnt.task != first.task
    steps = len([r for r in search_rows(_rows(config(inputs, tmp_path), first.run_id))
                 if r["state"] == "COMPLETE"])
    assert learnt.reuse["evaluations"] == steps and learnt.reuse["tasks"] == 1
    assert learnt.learnt["trained_on"].get(first.task, 0) > 0  # F_mo was warm-started on the first task's steps
    alone = search(config(other, tmp_path, strategy="progressive", reuse=False, max_steps=2, per_round=2,
                          cache_dir=str(tmp_path / "cache3")))
    assert alone.reuse == {"evaluations": 0, "tasks": 0}
    trained = alone.learnt.get("trained_on", {})
    assert first.task not in trained and set(trained) <= {alone.task}


def test_report_curve_and_comparison_of_runs(finished, tmp_path):
    import numpy as np

    from automc.search.indicators import hypervolume
    from automc.search.report import write_comparison

    cfg, res, _ = finished
    with open_store(cfg.store) as s:
        info = build_report(s, res.run_id)
    assert len(info.curve) == info.evaluations
    assert all(a <= b for a, b in zip(info.curve, info.curve[1:], strict=False))  # anytime: never decreases
    pts = np.array([(p["val_accuracy"], p["pr"]) for p in info.points])
    assert info.hypervolume == pytest.approx(hypervolume(pts, cfg.target_pr))
    reached = [p["val_accuracy"] for p in info.points if p["pr"] >= cfg.target_pr]
    assert len(info.best_curve) == info.evaluations and info.best_curve[-1] == pytest.approx(max(reached, default=0))
    paths = write_comparison([info, info], tmp_path / "cmp")
    assert paths["plot"].stat().st_size > 0 and paths["curves"].stat().st_size > 0
    rows = [line for line in paths["report"].read_text().splitlines() if line.startswith(f"| {res.run_id} ")]
    assert len(rows) == 2
