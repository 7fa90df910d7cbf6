"""Importer of strategy-level experience records from the methods' own papers.

Columns: method, model, dataset, hyperparameters (JSON), flops_reduction, accuracy_change (relative),
base_top1, base_params_m, base_flops_m, num_classes, num_images, image_size, image_channels; optionally ``source``
(the row's provenance: where and how it was measured), else the file's name is every row's source.
``hyperparameters.reduction_ratio`` is the parameter reduction reported; the other keys map onto the catalogue.
A value outside the grid (but inside the hyperparameter's domain) becomes an extra setting and strategy.
"""

from __future__ import annotations

import json
from pathlib import Path

from automc.catalog import Catalog
from automc.errors import AutomcError, ValidationError
from automc.importers._common import RowChecker, model_name, read_rows
from automc.kb.records import GraphBatch, TaskFeatures, content_id
from automc.kb.store import add_setting, add_strategy

COLUMNS = ("method", "model", "dataset", "hyperparameters", "flops_reduction", "accuracy_change", "base_top1",
           "base_params_m", "base_flops_m", "num_classes", "num_images", "image_size", "image_channels")
_EXTRA = ("reduction_ratio",)


def parse(path: Path, catalog: Catalog) -> tuple[GraphBatch, int, list[ValidationError]]:
    """Validate every row and build the graph changes; errors are collected, not raised."""
    header, rows = read_rows(path)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        return GraphBatch(), 0, [ValidationError(f"missing column(s) {', '.join(missing)}", path=str(path), line=1)]
    batch, errors, n = GraphBatch(), [], 0
    try:
        for line, row in rows:
            n += 1
            try:
                _add_row(batch, catalog, RowChecker(path, line, row), path.name)
            except ValidationError as e:
                errors.append(e)
    except ValidationError as e:
        errors.append(e)
    return batch, n, errors


def _add_row(batch: GraphBatch, catalog: Catalog, c: RowChecker, file_name: str) -> None:
    method_name = c.text("method")
    if method_name not in catalog.methods:
        raise c.fail("method", f"unknown method {method_name!r}; known: {', '.join(catalog.methods)}")
    method = catalog.methods[method_name]
    try:
        hps = json.loads(c.text("hyperparameters"))
    except json.JSONDecodeError as e:
        raise c.fail("hyperparameters", f"invalid JSON: {e.msg}") from None
    if not isinstance(hps, dict):
        raise c.fail("hyperparameters", "expected a JSON object")
    reduction = hps.get("reduction_ratio")
    if not isinstance(reduction, int | float) or isinstance(reduction, bool) or not 0 < reduction < 1:
        raise c.fail("hyperparameters", f"reduction_ratio must be a number in (0, 1), got {reduction!r}")
    params = {k: v for k, v in hps.items() if k not in _EXTRA}
    if "target_ratio_factor" in method.grid:
        params.setdefault("target_ratio_factor", 1.0)  # the paper's method reached its reduction in one go
    try:
        strategy = catalog.make_strategy(method_name, params, complete=False)
    except AutomcError as e:
        field = getattr(e, "field", None)
        raise c.fail(f"hyperparameters.{field}" if field else "hyperparameters",
                     getattr(e, "problem", str(e))) from None
    task = TaskFeatures(
        model=model_name(c.text("model")), dataset=c.text("dataset").lower(),
        num_classes=c.number("num_classes", lo=2, integer=True), image_size=c.number("image_size", lo=1, integer=True),
        image_channels=c.number("image_channels", lo=1, integer=True),
        num_images=c.number("num_images", lo=1, integer=True), base_accuracy=c.number("base_top1", lo=0, hi=1),
        params=c.number("base_params_m", lo=0) * 1e6, flops=c.number("base_flops_m", lo=0) * 1e6)
    ar = c.number("accuracy_change", lo=-1, hi=10)
    fr = c.number("flops_reduction", lo=-1, hi=1, required=False)
    complete = len(strategy.settings) == len(method.grid)
    exp = {"algorithm": method_name, "level": "strategy" if complete else "method",
           "settings": json.dumps({**strategy.params, **{k: hps[k] for k in _EXTRA}}, sort_keys=True),
           "target_pr": float(reduction), "pr": float(reduction), "fr": fr, "ar": ar,
           "accuracy": task.base_accuracy * (1 + ar), "params": task.params * (1 - reduction),
           "flops": task.flops * (1 - fr) if fr is not None else None}
    # A row's own source is part of its identity: one result measured on two machines is two experiences.
    source = c.row.get("source") or file_name
    exp_id = content_id(task.model, task.dataset, exp, *([source] if c.row.get("source") else []))
    task_key = batch.task(task)
    batch.node("Experience", id=exp_id, source=source, **exp)
    batch.rel("EXP_ON_TASK", exp_id, task_key)
    batch.rel("EXP_OF_METHOD", exp_id, method_name)
    for hp, v in strategy.settings:
        key = add_setting(batch, hp, v, in_catalog=v in method.grid[hp])
        if not complete:  # a strategy-level experience reaches its settings through the strategy (R2)
            batch.rel("EXP_WITH_SETTING", exp_id, key)
    if complete:
        key = add_strategy(batch, method_name, strategy.settings, in_catalog=catalog.in_grid(strategy))
        batch.rel("EXP_OF_STRATEGY", exp_id, key)


def matches(header: list[str]) -> bool:
    return {"method", "hyperparameters", "accuracy_change"} <= set(header)
