"""Importers: whole-file validation, idempotence, off-grid settings, backups that round-trip, two writers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from automc.errors import ValidationError, ValidationErrors
from automc.importers import builtin_measured, import_file, init_kb
from automc.kb import open_store
from automc.kb.backup import export_store

MEASURED = builtin_measured().read_text().count("\n") - 1  # rows of the shipped measured experience
HEADER = ("method,model,dataset,hyperparameters,flops_reduction,accuracy_change,base_top1,base_params_m,"
          "base_flops_m,num_classes,num_images,image_size,image_channels\n")


def _row(method="NS", hps='{"finetune_epochs_factor": 0.4, "max_layer_prune_ratio": 0.7, "reduction_ratio": 0.5}',
         ar="-0.01", model="Resnet-56"):
    hps = '"' + hps.replace('"', '""') + '"'
    return f"{method},{model},cifar10,{hps},0.4,{ar},0.93,0.85,125.0,10,60000,32,3\n"


def _csv(tmp_path: Path, *rows: str) -> Path:
    p = tmp_path / "exp.csv"
    p.write_text(HEADER + "".join(rows))
    return p


def test_init_writes_catalog_and_paper_results(kb_copy):
    with open_store(f"ladybug://{kb_copy}") as s:
        stats = s.stats()
        assert stats["nodes"]["Method"] == 7 and stats["nodes"]["Strategy"] == 9042
        # 80 distinct results in Tables 2-3 (48 of the six methods, 32 of the AutoML baselines) and our measured ones
        assert stats["nodes"]["Experience"] == 80 + MEASURED
        assert stats["relationships"]["EXP_OF_METHOD"] == 48 + MEASURED
        ns = s.named("experiences-of-method", {"method": "NS"})
        r56 = [r for r in ns if r["model"] == "resnet56" and r["target_pr"] == 0.4]
        assert len(r56) == 1 and r56[0]["ar"] == pytest.approx(-0.0203)
        report = init_kb(s)
        assert report.added == {}


def test_strategy_level_records_map_onto_the_catalogue(kb_copy, tmp_path):
    path = _csv(tmp_path, _row(), _row(hps='{"finetune_epochs_factor": 0.26, "max_layer_prune_ratio": 0.9, '
                                          '"reduction_ratio": 0.15}', model="Resnet-164"))
    with open_store(f"ladybug://{kb_copy}") as s:
        report = import_file(s, path)
        assert report.added["Experience"] == 2
        # 0.26 is outside the grid: an extra setting and an extra (non-catalogue) strategy, not an error
        assert report.added["HyperparameterSetting"] == 1 and report.added["Strategy"] == 1
        assert len(s.strategies("NS")) == 72
        rows = {r["strategy"] for r in s.named("experience-rows") if r["level"] == "strategy"}
        assert "NS(finetune_epochs_factor=0.4,target_ratio_factor=1.0,max_layer_prune_ratio=0.7)" in rows
        assert import_file(s, path).added == {}


def test_one_bad_row_fails_the_file_and_writes_nothing(kb_copy, tmp_path):
    path = _csv(tmp_path, _row(), _row(ar="lots"), _row(method="XYZ"),
                _row(hps='{"finetune_epochs_factor": 0.4, "max_layer_prune_ratio": 1.5, "reduction_ratio": 0.5}'))
    with open_store(f"ladybug://{kb_copy}") as s:
        before = s.stats()
        with pytest.raises(ValidationErrors) as info:
            import_file(s, path)
        assert s.stats() == before
    msgs = [str(e) for e in info.value.errors]
    assert msgs[0].startswith(f"{path}:3: accuracy_change: expected a number")
    assert msgs[1].startswith(f"{path}:4: method: unknown method 'XYZ'")
    assert msgs[2].startswith(f"{path}:5: hyperparameters.max_layer_prune_ratio: 1.5 is outside")
    assert len(msgs) == 3


def test_unrecognised_file_is_refused(tmp_path, kb_copy):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with open_store(f"ladybug://{kb_copy}") as s, pytest.raises(ValidationError, match="unrecognised columns"):
        import_file(s, p)
    with open_store(f"ladybug://{kb_copy}") as s, pytest.raises(ValidationError, match="no such file"):
        import_file(s, tmp_path / "missing.csv")


def test_shared_experience_records(shared_dir, kb_copy):
    path = shared_dir / "kb-sources" / "method-papers-experience.csv"
    with open_store(f"ladybug://{kb_copy}") as s:
        before = s.stats()["relationships"]["EXP_OF_STRATEGY"]  # measured runs with every setting known
        assert import_file(s, path).added["Experience"] == 102
        assert import_file(s, path).added == {}
        assert s.stats()["relationships"]["EXP_OF_STRATEGY"] == before + 102


def test_export_then_import_into_fresh_store_reproduces_stats(kb_copy, tmp_path):
    with open_store(f"ladybug://{kb_copy}") as s:
        vecs = {r["id"]: [0.1, 0.2] for r in s.strategies("LFB")}
        s.set_embeddings("Strategy", vecs, {"config": {"d": 2}})
        original = s.stats()
        export_store(s, tmp_path / "dump")
    with open_store(f"ladybug://{tmp_path / 'fresh.lbug'}") as fresh:
        report = import_file(fresh, tmp_path / "dump")
        assert report.format == "backup"
        assert fresh.stats() == original
        assert fresh.embeddings("Strategy") == vecs
    with pytest.raises(ValidationError, match="not empty"), open_store(f"ladybug://{kb_copy}") as s:
        export_store(s, tmp_path / "dump")


def test_corrupt_backup_line_is_located(kb_copy, tmp_path):
    with open_store(f"ladybug://{kb_copy}") as s:
        export_store(s, tmp_path / "dump")
    f = tmp_path / "dump" / "node.Method.jsonl"
    line = len(f.read_text().splitlines()) + 1  # one row per catalogue method, then the bad one
    f.write_text(f.read_text() + '{"name": "X", "colour": 1}\n')
    with open_store(f"ladybug://{tmp_path / 'fresh.lbug'}") as fresh:
        with pytest.raises(ValidationErrors, match=rf"node.Method.jsonl:{line}: colour: unknown property"):
            import_file(fresh, tmp_path / "dump")
        assert sum(fresh.stats()["nodes"].values()) == 0


@pytest.mark.slow
def test_two_processes_importing_at_once(kb_copy, tmp_path):
    """Both succeed (the second waits for the lock) and the totals are exact; never corrupt counts."""
    files = []
    for i in range(2):
        p = tmp_path / f"exp{i}.csv"
        p.write_text(HEADER + "".join(_row(ar=f"-0.0{i}{j}") for j in range(1, 10)))
        files.append(p)
    script = textwrap.dedent("""
        import sys, json
        from automc.kb import open_store
        from automc.importers import import_file
        try:
            with open_store(sys.argv[1]) as s:
                print(json.dumps(import_file(s, sys.argv[2]).added))
        except Exception as e:
            print(json.dumps({"error": type(e).__name__, "msg": str(e)}))
    """)
    uri = f"ladybug://{kb_copy}"
    procs = [subprocess.Popen([sys.executable, "-c", script, uri, str(f)], stdout=subprocess.PIPE, text=True)
             for f in files]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    ok = [o for o in outs if "error" not in o]
    for o in outs:
        if "error" in o:  # the only acceptable failure is a clear lock error
            assert o["error"] == "StoreLockedError" and "locked" in o["msg"]
    with open_store(uri) as s:
        assert s.stats()["nodes"]["Experience"] == 80 + MEASURED + 9 * len(ok)
    assert ok, "at least one import must succeed"


@pytest.mark.parametrize(("content", "message"), [
    (HEADER + _row() + _row(method="NS" + "x" * 140_000), r":3: field too large$"),
    (HEADER + _row() + _row().replace("Resnet-56", "Res\0net"), r":3: NUL byte"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00junk", r"not a UTF-8 text file"),
    ("", r":1: empty file"),
    (HEADER + _row() + 'NS,"unterminated\n', r"exp.csv:\d+: "),
])
def test_unreadable_csv_is_one_located_error(tmp_path, content, message):
    p = tmp_path / "exp.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with open_store(f"ladybug://{tmp_path / 'kb.lbug'}") as s:
        with pytest.raises((ValidationError, ValidationErrors)) as info:
            import_file(s, p)
        assert sum(s.stats()["nodes"].values()) == 0
    errors = getattr(info.value, "errors", [info.value])
    assert len(errors) == 1 and re.search(message, str(errors[0])), str(info.value)
    assert str(errors[0]).startswith(str(p))
