"""The end of a search: the final fine-tune of the front's best schemes, the export of the reported model, the run
marked COMPLETE and the report written.

The exported model is the one the report names: its saved final model, else rebuilt with the recipe and seeds of
its evaluation and checked against the validation accuracy recorded for it. Models are written into a temporary
folder, checked to load, then renamed into place; the run becomes COMPLETE only after the export, so a kill during
it leaves the run to ``--resume``, which exports again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automc._interrupt import check as check_interrupt
from automc.catalog import scheme_key, scheme_text
from automc.kb.states import State

if TYPE_CHECKING:
    from automc.kb import Store, TaskFeatures
    from automc.search._base import SchemeKey
    from automc.search.space import SearchSpace
    from automc.search.study import SearchResult, Study


def fine_tune(study: Study) -> None:
    """The final models of the top-k schemes (best validation accuracy among those meeting the targets,
    ``objective``), each trained ``final_epochs`` in total on all the training data (``final_mode``: re-applied from
    the base model, or the searched model polished; skipped by final_epochs 0). When no search step was evaluated
    (a budget spent on screenings), the top-k screened schemes by rung-0 accuracy, re-applied from the base."""
    from automc.search.objective import ranked

    cfg = study.cfg
    if not cfg.final_epochs or not cfg.top_k:
        return
    with study.opened() as s:
        done = {r["scheme"] for r in s.run_evaluations(study.id)
                if r["fidelity"] == "final" and r["state"] == State.COMPLETE}
    best = ranked(study.history.complete(), cfg.target_pr, cfg.target_fr)
    mode = final_mode(cfg)
    if not best:  # the budget ended before any step: the best screenings (AMC fine-tunes its best episode)
        best = ranked([o for o in study.history.screened if o.ok], cfg.target_pr, cfg.target_fr)
        mode = "reapply"  # there is no searched model to polish
    todo = [o for o in best[: int(cfg.top_k)] if scheme_text(o.scheme) not in done]
    task = final_task(study) if todo else None
    for o in todo:
        text = scheme_text(o.scheme)
        study.emit("final", study.round, f"final fine-tune of {text}")
        token = study.begin(o.scheme, fidelity="final", round_=study.round, task=task)
        try:
            result, model = study.evaluator.final(o.scheme, task, mode=mode)
            check_interrupt()
            if result.ok and cfg.out:  # saved before it is recorded: a recorded final model exists
                _save_model(model, Path(cfg.out) / "final" / study.space.to_scheme(o.scheme).id, task, text,
                            float(cfg.target_pr), token[0])
        except BaseException as e:
            study.cut_short([token], e)
            raise
        study.end(token, result, study.round)


BASELINE = "baseline"  # the fidelity of the reference scheme's evaluation: stored like a final one, never reported best
FALLBACK = "SFP(target_ratio_factor=1.0)"
FALLBACK_WHY = ("the knowledge base has no single-method result reaching PR >= {gamma} with a catalogue grid strategy; "
                "the fallback SFP(target_ratio_factor=1.0) reaches the target in one step with the grid's middle "
                "settings, and SFP alone was among the best single methods the project measured on ResNet-20")


def baseline(study: Study) -> None:
    """The final fine-tune (``Evaluator.final`` on ``final_task``: same budget, same seeds) of one reference scheme,
    stored at fidelity "baseline" as it finishes; skipped by ``--baseline none``, without a final fine-tune, and
    when this run already completed it (a resume).

    ``--baseline kb`` (the default) takes the knowledge base's choice (``kb_baseline``), else ``FALLBACK``; the
    choice is kept with the run, so a resume after the knowledge base changed never evaluates a second scheme.
    """
    from automc.search.config import baseline_scheme

    cfg = study.cfg
    given = str(cfg.baseline or "kb").strip()
    if given.lower() == "none" or not cfg.final_epochs or not cfg.top_k:
        return
    earlier = dict(study.config_json.get("baseline") or {})
    with study.opened() as s:
        done = {r["scheme"] for r in s.run_evaluations(study.id)
                if r["fidelity"] == BASELINE and r["state"] == State.COMPLETE}
        if given.lower() != "kb":
            key, why = baseline_scheme(given), "given by --baseline"
        elif earlier.get("given") == "kb" and earlier.get("scheme"):
            key, why = scheme_key(earlier["scheme"]), str(earlier.get("why") or "")
        else:
            key, why = _kb_choice(study, s)
    study.config_json["baseline"] = {"given": given, "scheme": scheme_text(key) if key else None, "why": why}
    with study.opened() as s:
        s.update_run(study.id, config=study.config_json)
    if not key or scheme_text(key) in done:
        return
    text = scheme_text(key)
    task = final_task(study)
    study.emit("final", study.round, f"baseline: final fine-tune of {text} ({why})")
    token = study.begin(key, fidelity=BASELINE, round_=study.round, task=task)
    try:
        # reapply, whatever --final-mode: one method given the whole final budget from the base model
        result, _ = study.evaluator.final(key, task, mode="reapply")
        check_interrupt()
    except BaseException as e:
        study.cut_short([token], e)
        raise
    study.end(token, dataclasses.replace(result, fidelity=BASELINE), study.round)


def _kb_choice(study: Study, store: Store) -> tuple[SchemeKey | None, str]:
    """The knowledge base's reference scheme with why, else ``FALLBACK`` (None when even that is off the grid)."""
    from automc.errors import ValidationError
    from automc.search.config import baseline_scheme

    gamma = float(study.cfg.target_pr)
    found = kb_baseline(store, study.task, gamma, study.space)
    if found is not None:
        return found
    why = FALLBACK_WHY.format(gamma=gamma)
    try:
        return baseline_scheme(FALLBACK), why
    except ValidationError as e:  # a catalogue without it: the run reports no baseline rather than failing
        return None, f"{why}, but the catalogue refuses it ({e.problem}): no baseline"


def kb_baseline(store: Store, task: TaskFeatures, target_pr: float, space: SearchSpace) -> tuple[SchemeKey, str] | None:
    """The best-rated single-method strategy reaching ``target_pr`` on the most similar task of the knowledge base,
    as a one-step scheme with why; None when no strategy-level experience reaches it with a grid strategy.

    Tasks are compared as the search's reuse compares them (``reuse.similar_tasks`` on the task features); a
    strategy is rated by its best accuracy change there, then its mean (a strategy measured under more budgets
    is not penalised for its weaker ones), then by id.
    """
    from collections import defaultdict

    from automc._num import finite
    from automc.embed.experience import task_feature_vector
    from automc.search.reuse import similar_tasks, task_vector

    rows = [r for r in store.named("strategy-experiences", {"min_pr": float(target_pr) - 1e-9})
            if r["strategy"] in space.index and finite(r.get("ar")) is not None]
    if not rows:
        return None
    features: dict[str, tuple[float, ...]] = {}
    for r in rows:
        features.setdefault(str(r["task"]), tuple(task_feature_vector(r)))
    nearest = similar_tasks(task_vector(task, None), features, 1)[0]
    ars: dict[str, list[float]] = defaultdict(list)
    source: dict[str, str] = {}
    for r in rows:
        if str(r["task"]) == nearest:
            if not ars[r["strategy"]] or float(r["ar"]) > max(ars[r["strategy"]]):
                source[r["strategy"]] = str(r.get("source") or "")
            ars[r["strategy"]].append(float(r["ar"]))
    best = max(sorted(ars), key=lambda k: (max(ars[k]), sum(ars[k]) / len(ars[k])))
    row = next(r for r in rows if str(r["task"]) == nearest)
    why = (f"chosen by the knowledge base: the best-rated single method reaching PR >= {target_pr:g} on the most "
           f"similar task ({row['model']}, {row['dataset']}; of {len(features)} with such results), accuracy change "
           f"{max(ars[best]):+.2%} (best of {len(ars[best])} result(s); source: {source[best]})")
    return (best,), why


def final_task(study: Study) -> Any:
    """The final fine-tune's task: all the training data and ``final_epochs`` (the total, split by
    ``Evaluator.final_split``), the run's seed and device."""
    from automc.compress.base import Task

    cfg, task = study.cfg, study.evaluator.task
    return Task(study.full_data, float(cfg.target_pr), dataclasses.replace(task.budget, epochs=float(cfg.final_epochs)),
                task.device, int(cfg.seed))


def final_mode(cfg: Any) -> str:
    """The run's final mode (a run stored before the setting existed re-applied its schemes)."""
    return str(cfg.final_mode or "reapply")


def finish(study: Study, reuse: Mapping[str, Any], message: str, learnt: Mapping[str, Any]) -> SearchResult:
    """Export the reported best model, then mark the run COMPLETE with its front, write the report, drop the cache."""
    from automc.search import report
    from automc.search.config import run_dir
    from automc.search.study import SearchResult

    out = Path(study.cfg.out) if study.cfg.out else None
    files: dict[str, str] = {}
    with study.opened() as s:
        info = report.build_report(s, study.id)
    best = report.best_row(info) if out is not None else None
    if best is not None:
        why = _export(study, best, out / "model")
        if why:
            message = f"{message}; {why}" if message else why
        else:
            files["model"] = str(out / "model")
    seconds = study.seconds
    with study.opened() as s:
        s.update_run(study.id, state=State.COMPLETE, front=info.front, seconds=seconds)
        info = info._replace(run=s.load_run(study.id), seconds=seconds)  # the report as of COMPLETE
    if out is not None:
        files = {**{k: str(v) for k, v in report.write_report(info, out).items()}, **files}
    shutil.rmtree(run_dir(study.cfg, study.id) / "cache", ignore_errors=True)
    study.emit("done", max(study.history.rounds - 1, 0), message)
    return SearchResult(study.id, State.COMPLETE, study.task.id, info.front, info.evaluations, info.failed,
                        dict(reuse), seconds, info.train_seconds, study.store, out, files, message, dict(learnt),
                        info.setup_seconds, info.ranked[:10], dict(info.baseline or {}))


def _export(study: Study, best: Mapping[str, Any], target: Path) -> str:
    """Export the model the report names as best into ``target``; returns why nothing was exported, or "".

    The model is the saved final model of that evaluation, else it is rebuilt with the recipe and seeds of its
    evaluation (final fine-tune or search step) and must measure the validation accuracy recorded for it.
    """
    from automc.compress.train import evaluate

    key, eval_id = scheme_key(best["scheme"]), str(best["evaluation_id"])
    final_dir = Path(str(study.cfg.out)) / "final" / str(best["scheme_id"])
    if best["fidelity"] == "final" and _saved_evaluation(final_dir) == eval_id:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final_dir, tmp)
        try:
            _install(tmp, target)
            return ""
        except Exception:  # noqa: BLE001 - a damaged saved model: rebuild it below
            shutil.rmtree(tmp, ignore_errors=True)
    if best["fidelity"] == "final":
        task = final_task(study)
        result, model = study.evaluator.final(key, task, mode=final_mode(study.cfg))
        measured = result.val_accuracy if result.ok else None
    else:
        task = study.evaluator.task
        model = study.evaluator.model(key)
        measured = evaluate(model, task.data, "val", device=task.device).top1
    check_interrupt()
    if measured is None or measured != best["val_accuracy"]:
        got = "it failed" if measured is None else f"validation accuracy {measured:.4f}"
        return (f"the reported best model ({best['fidelity']} evaluation {eval_id}, validation accuracy "
                f"{best['val_accuracy']:.4f}) could not be rebuilt exactly ({got}; a non-deterministic device?); "
                f"no model exported")
    _save_model(model, target, task, str(best["scheme"]), float(study.cfg.target_pr), eval_id)
    return ""


def _save_model(model: Any, directory: Path, task: Any, text: str, target_pr: float, evaluation_id: str) -> None:
    """Save a model into a temporary folder beside ``directory``, check that it loads, then rename it into place:
    a kill leaves the previous folder or none, never a half-written one."""
    from automc.compress.saving import save_compressed

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    data = task.data
    save_compressed(model, tmp, data.example_input(2), mean=data.mean, std=data.std,
                    extra={"scheme": text, "target_pr": target_pr, "evaluation_id": evaluation_id})
    _install(tmp, directory)


def _install(tmp: Path, directory: Path) -> None:
    """Rename a checked saved-model folder into place (the old one, if any, goes only after the new one is in)."""
    _loads(tmp)
    for left in directory.parent.glob(f".{directory.name}.*-*"):  # an earlier export killed midway
        if left != tmp:
            shutil.rmtree(left, ignore_errors=True)
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _loads(directory: Path) -> None:
    """Raise unless the saved model in ``directory`` loads both ways (standalone program and automc's state)."""
    from automc.compress.saving import load_compressed, load_standalone

    arch = json.loads((directory / "architecture.json").read_text())
    load_standalone(directory / arch["standalone"])
    if arch.get("onnx"):
        import onnx

        onnx.checker.check_model(str(directory / arch["onnx"]))
    if arch.get("base") is not None:
        load_compressed(directory)


def _saved_evaluation(directory: Path) -> str | None:
    """The evaluation id a saved model names (``_install`` checks that its copy loads), when there is one."""
    try:
        return str(json.loads((directory / "architecture.json").read_text())["extra"]["evaluation_id"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or foreign: the model is rebuilt instead
        return None
