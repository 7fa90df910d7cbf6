"""Importer of method-level results as the AutoMC paper's tables report them (Tables 2 and 3).

Columns: table, algorithm, model, dataset, target_pr, params_m, pr_pct, flops_g, fr_pct, acc_pct, acc_change_pct.
``baseline`` rows give the uncompressed model (task features); a row of one of the six methods becomes a
method-level experience with the known setting target_ratio_factor=1.0 (the method reached the target alone);
other algorithms (the AutoML baselines) are kept as algorithm-level experiences.
"""

from __future__ import annotations

import json
from pathlib import Path

from automc.catalog import Catalog
from automc.errors import ValidationError
from automc.importers._common import DATASETS, RowChecker, model_name, read_rows
from automc.kb.records import GraphBatch, TaskFeatures, content_id
from automc.kb.store import add_setting

COLUMNS = ("table", "algorithm", "model", "dataset", "target_pr", "params_m", "pr_pct", "flops_g", "fr_pct",
           "acc_pct", "acc_change_pct")
SOURCE = "AutoMC paper (Wang, Wang, Shi; ICDE 2024)"


def parse(path: Path, catalog: Catalog) -> tuple[GraphBatch, int, list[ValidationError]]:
    """Validate every row and build the graph changes; errors are collected, not raised."""
    _, rows = read_rows(path)
    errors: list[ValidationError] = []
    baselines: dict[tuple[str, str], dict] = {}
    results = []
    n = 0
    try:
        for line, row in rows:
            n += 1
            c = RowChecker(path, line, row)
            try:
                item = {
                    "line": line,
                    "table": c.number("table", lo=1, integer=True),
                    "algorithm": c.text("algorithm"),
                    "model": model_name(c.text("model")),
                    "dataset": c.text("dataset").lower(),
                    "params_m": c.number("params_m", lo=0, required=False),
                    "flops_g": c.number("flops_g", lo=0, required=False),
                    "acc_pct": c.number("acc_pct", lo=0, hi=100),
                }
                if item["dataset"] not in DATASETS:
                    raise c.fail("dataset", f"unknown dataset {item['dataset']!r}; known: {', '.join(DATASETS)}")
                if item["algorithm"].lower() == "baseline":
                    baselines[(item["model"], item["dataset"])] = item
                    continue
                item.update(
                    target_pr=c.number("target_pr", lo=0, hi=1),
                    pr_pct=c.number("pr_pct", lo=-100, hi=100),
                    fr_pct=c.number("fr_pct", lo=-100, hi=100, required=False),
                    acc_change_pct=c.number("acc_change_pct", lo=-100, hi=1000, required=False),
                )
                results.append(item)
            except ValidationError as e:
                errors.append(e)
    except ValidationError as e:
        errors.append(e)
    # Table 3 repeats Table 2 results with fewer columns: one experience per result, fields merged.
    merged: dict[tuple, dict] = {}
    for item in results:
        ident = (item["algorithm"], item["model"], item["dataset"], item["target_pr"], round(item["pr_pct"], 2),
                 round(item["acc_pct"], 2))
        seen = merged.setdefault(ident, item)
        for k, v in item.items():
            if seen.get(k) is None:
                seen[k] = v
    batch = GraphBatch()
    for ident, item in merged.items():
        base = baselines.get((item["model"], item["dataset"]))
        classes, size, channels, images = DATASETS[item["dataset"]]
        task = TaskFeatures(
            model=item["model"], dataset=item["dataset"], num_classes=classes, image_size=size,
            image_channels=channels, num_images=images,
            base_accuracy=base["acc_pct"] / 100 if base else None,  # type: ignore[arg-type]
            params=base["params_m"] * 1e6 if base and base["params_m"] is not None else None,  # type: ignore[arg-type]
            flops=base["flops_g"] * 1e9 if base and base["flops_g"] is not None else None,  # type: ignore[arg-type]
        )
        ar = item["acc_change_pct"] / 100 if item["acc_change_pct"] is not None else None
        if ar is None and base:
            ar = (item["acc_pct"] - base["acc_pct"]) / base["acc_pct"]
        is_method = item["algorithm"] in catalog.methods
        settings = {"target_ratio_factor": 1.0} if is_method else {}
        exp = {
            "algorithm": item["algorithm"], "level": "method" if is_method else "algorithm",
            "settings": json.dumps(settings, sort_keys=True), "target_pr": item["target_pr"],
            "pr": item["pr_pct"] / 100, "fr": item["fr_pct"] / 100 if item["fr_pct"] is not None else None,
            "ar": ar, "accuracy": item["acc_pct"] / 100,
            "params": item["params_m"] * 1e6 if item["params_m"] is not None else None,
            "flops": item["flops_g"] * 1e9 if item["flops_g"] is not None else None,
        }
        exp_id = content_id(*ident)
        task_key = batch.task(task)
        batch.node("Experience", id=exp_id, source=SOURCE, **exp)
        batch.rel("EXP_ON_TASK", exp_id, task_key)
        if is_method:
            batch.rel("EXP_OF_METHOD", exp_id, item["algorithm"])
            for hp, v in settings.items():
                batch.rel("EXP_WITH_SETTING", exp_id, add_setting(batch, hp, v, in_catalog=True))
    return batch, n, errors


def matches(header: list[str]) -> bool:
    return {"table", "algorithm", "pr_pct", "acc_pct"} <= set(header)
