"""A sweep of careless and hostile input to ``automc kb import|query|stats|export``.

Every case must end with exit status ≠ 0, no traceback, a first line ``error: ...`` naming the problem, and
nothing written: the knowledge base keeps its counts and no file or folder appears, changes size or vanishes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automc.cli.app import app
from automc.kb import open_store

runner = CliRunner()
EXP_HEADER = ("method,model,dataset,hyperparameters,flops_reduction,accuracy_change,base_top1,base_params_m,"
              "base_flops_m,num_classes,num_images,image_size,image_channels\n")
EXP_ROW = ('NS,resnet56,cifar10,"{""max_layer_prune_ratio"": 0.7, ""reduction_ratio"": 0.5}",0.4,-0.01,0.93,0.85,'
           "125.0,10,60000,32,3\n")


def _files(root: Path) -> dict[str, int | None]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _setup(w: Path) -> None:
    """Hostile and careless inputs, all in the work folder ``w``."""
    (w / "empty.csv").write_text("")
    (w / "junk.bin").write_bytes(bytes(range(256)) * 64)
    (w / "nul.csv").write_text(EXP_HEADER + EXP_ROW.replace("resnet56", "res\0net56"))
    (w / "huge.csv").write_text(EXP_HEADER + EXP_ROW.replace("resnet56", "r" * 200_000))
    (w / "columns.csv").write_text("colour,size\nred,3\n")
    (w / "extra.csv").write_text(EXP_HEADER + EXP_ROW.rstrip("\n") + ",surplus\n")
    (w / "nan.csv").write_text(EXP_HEADER + EXP_ROW.replace("-0.01", "nan"))
    (w / "quote.csv").write_text(EXP_HEADER + 'NS,"resnet56\n')
    (w / "latin1.csv").write_bytes((EXP_HEADER + EXP_ROW.replace("resnet56", "résnet")).encode("latin-1"))
    (w / "plain_dir").mkdir()
    (w / "plain_dir" / "x.txt").write_text("x")
    bad = {"manifest.json": "{not json", "node.Method.jsonl": "{}\n"}
    for name, manifest in (("badmanifest", bad["manifest.json"]), ("wrongformat", '{"format": "other"}'),
                           ("listmanifest", "[1, 2]")):
        (w / name).mkdir()
        (w / name / "manifest.json").write_text(manifest)
    good = '{"format": "automc-kb-export", "schema_version": 2}'
    for name, lines in (("badjson", "{oops\n"), ("badtype", '{"name": "X", "title": 5}\n'),
                        ("notobject", "[1]\n"), ("unknownprop", '{"name": "X", "colour": 1}\n')):
        (w / name).mkdir()
        (w / name / "manifest.json").write_text(good)
        (w / name / "node.Method.jsonl").write_text(lines)
    (w / "unknownlabel").mkdir()
    (w / "unknownlabel" / "manifest.json").write_text(good)
    (w / "unknownlabel" / "node.Spaceship.jsonl").write_text('{"id": "x"}\n')
    (w / "newer").mkdir()
    (w / "newer" / "manifest.json").write_text('{"format": "automc-kb-export", "schema_version": 99}')
    (w / "full").mkdir()
    (w / "full" / "keep.txt").write_text("mine")
    (w / "a_file").write_text("not a folder")
    (w / "not_a_db").write_text("a,b\n1,2\n")
    (w / "store_dir.lbug").mkdir()


# (arguments, a fragment the one error line must contain); STORE is the real knowledge base, W the work folder.
CASES = [
    # import
    (["kb", "import", "W/missing.csv"], "no such file"),
    (["kb", "import", "W/plain_dir"], "no such file (or not an automc export directory)"),
    (["kb", "import", "W/empty.csv"], "empty file"),
    (["kb", "import", "W/junk.bin"], "not a UTF-8 text file"),
    (["kb", "import", "W/nul.csv"], "NUL byte"),
    (["kb", "import", "W/huge.csv"], "huge.csv:2: field too large"),
    (["kb", "import", "W/columns.csv"], "unrecognised columns"),
    (["kb", "import", "W/extra.csv"], "more values than columns"),
    (["kb", "import", "W/nan.csv"], "accuracy_change"),
    (["kb", "import", "W/quote.csv"], "quote.csv:"),
    (["kb", "import", "W/latin1.csv"], "not a UTF-8 text file"),
    (["kb", "import", "W/badmanifest"], "unreadable manifest"),
    (["kb", "import", "W/wrongformat"], "not an automc-kb-export directory"),
    (["kb", "import", "W/listmanifest"], "not an automc-kb-export directory"),
    (["kb", "import", "W/badjson"], "node.Method.jsonl:1: invalid JSON"),
    (["kb", "import", "W/badtype"], "node.Method.jsonl:1: title: expected STRING"),
    (["kb", "import", "W/notobject"], "expected a JSON object"),
    (["kb", "import", "W/unknownprop"], "colour: unknown property"),
    (["kb", "import", "W/unknownlabel"], "unknown node label"),
    (["kb", "import", "W/newer"], "schema version 99"),
    (["kb", "import", "W/huge.csv", "--store", "ladybug://W/new.lbug"], "field too large"),
    (["kb", "import", "W/empty.csv", "--store", "W/fresh/deeper/new.lbug"], "empty file"),
    (["kb", "import", "W/columns.csv", "--store", "W/not_a_db"], "not a valid"),
    (["kb", "import", "W/columns.csv", "--store", "W/store_dir.lbug"], "is a directory"),
    # query
    (["kb", "query", "MATCH (n) DETACH DELETE n"], "read-only"),
    (["kb", "query", "MATCH (m:Meta) SET m.value = '0'"], "read-only"),
    (["kb", "query", "DROP TABLE Strategy"], "read-only"),
    (["kb", "query", "COPY (MATCH (m:Method) RETURN m.name) TO 'W/leak.csv'"], "--write"),
    (["kb", "query", "LOAD FROM '/etc/passwd' (header=false, delim=':') RETURN *"], "--write"),
    (["kb", "query", "EXPORT DATABASE 'W/dbdump'"], "--write"),
    (["kb", "query", "INSTALL json"], "--write"),
    (["kb", "query", "CHECKPOINT"], "--write"),
    (["kb", "query", "MATCH (n RETURN n"], "Parser exception"),
    (["kb", "query", "MATCH (n:Spaceship) RETURN n"], "Spaceship"),
    (["kb", "query", "RETURN 1", "--param", "novalue"], "expected k=v"),
    (["kb", "query", "RETURN 1", "--named", "methods"], "either a Cypher query or --named"),
    (["kb", "query"], "either a Cypher query or --named"),
    (["kb", "query", "--named", "no-such-query"], "no named query"),
    (["kb", "query", "--named", "strategies-of-method"], "--param method"),
    (["kb", "query", "--named", "strategies-of-method", "--param", "method=NS", "--param", "limit=lots"],
     "expected int"),
    (["kb", "query", "RETURN 1", "--store", "W/missing.lbug"], "no knowledge base at"),
    (["kb", "query", "CREATE (:Model {name: 'x'})", "--write", "--store", "W/missing.lbug"], "no knowledge base at"),
    # stats
    (["kb", "stats", "--store", "W/missing.lbug"], "no knowledge base at"),
    (["kb", "stats", "--store", "W/no/such/folder/kb.lbug"], "no knowledge base at"),
    (["kb", "stats", "--store", "ladybug:/kb"], "not a store URI"),
    (["kb", "stats", "--store", "::::"], "not a store URI"),
    (["kb", "stats", "--store", "ladybug://"], "needs a path"),
    (["kb", "stats", "--store", "sqlite:///x.db"], "unknown store scheme"),
    (["kb", "stats", "--store", "W/not_a_db"], "not a valid"),
    (["kb", "stats", "--store", "W/store_dir.lbug"], "is a directory"),
    (["kb", "stats", "--store", "W/empty.csv"], "no knowledge base at"),
    # export
    (["kb", "export", "W/full"], "not empty"),
    (["kb", "export", "W/a_file"], "not a directory"),
    (["kb", "export", "W/no/such/parent/dump"], "parent folder does not exist"),
    (["kb", "export", "W/dump", "--store", "W/missing.lbug"], "no knowledge base at"),
    # stale
    (["kb", "stale", "--max-age", "-5m"], "duration"),
]


@pytest.fixture(scope="module")
def work(initialised_kb, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    store = root / "kb.lbug"
    for f in initialised_kb.parent.iterdir():
        (root / f.name.replace(initialised_kb.name, store.name)).write_bytes(f.read_bytes())
    w = root / "w"
    w.mkdir()
    _setup(w)
    with open_store(f"ladybug://{store}", read_only=True) as s:
        stats = s.stats()
    return root, store, w, stats


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_clean_error(work, monkeypatch, args, message):
    root, store, w, stats = work
    monkeypatch.chdir(root)
    monkeypatch.setenv("AUTOMC_STORE", f"ladybug://{store}")
    before = _files(root)
    res = runner.invoke(app, [a.replace("W/", f"{w}/") for a in args])
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0] if res.stderr.strip() else ""
    assert first.startswith("error:"), res.stderr
    assert message in res.stderr, res.stderr
    assert _files(root) == before
    with open_store(f"ladybug://{store}", read_only=True) as s:
        assert s.stats() == stats


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(work, tmp_path):
    _, store, _, _ = work
    p = tmp_path / "secret.csv"
    p.write_text(EXP_HEADER + EXP_ROW)
    p.chmod(0)
    res = runner.invoke(app, ["kb", "import", str(p), "--store", f"ladybug://{store}"])
    assert res.exit_code == 1 and "Permission denied" in res.stderr and "Traceback" not in res.stderr


def test_query_output_numbers_and_plain_rows(work):
    """``--json`` keeps sums as numbers; off a terminal rows are tab-separated, never wrapped or cut."""
    _, store, _, _ = work
    uri = f"ladybug://{store}"
    res = runner.invoke(app, ["kb", "query", "MATCH (s:Strategy) RETURN count(s) AS n, sum(1) AS total",
                              "--store", uri, "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["n"] == row["total"] == 9042 and isinstance(row["total"], int)
    res = runner.invoke(app, ["kb", "query", "MATCH (s:Strategy) RETURN s.id AS id, s.settings AS settings "
                              "ORDER BY size(s.id) DESC LIMIT 3", "--store", uri])
    lines = res.stdout.splitlines()
    assert lines[0] == "id\tsettings" and len(lines) == 4
    longest = lines[1].split("\t")
    assert len(longest) == 2 and longest[0].endswith(")") and json.loads(longest[1])
    res = runner.invoke(app, ["kb", "stats", "--store", uri])
    assert "Strategy\tE1\t9042" in res.stdout.splitlines()
