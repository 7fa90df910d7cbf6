import json

import typer
from typer.testing import CliRunner

from automc.cli.embed import embed_cmd
from automc.kb import open_store


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("embed")(embed_cmd)
    app.command("other")(lambda: None)  # two commands, so "embed" is addressed by name as under "automc kb"
    return app


def test_embed_command_trains_stores_and_summarises(planted):
    uri, _ = planted
    res = CliRunner().invoke(_app(), ["embed", "--store", uri, "--epochs", "2", "--dim", "8", "--seed", "1",
                                      "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "embedded 109 entities (326 triples) with transr, dim 8, 2 epochs" in res.output
    with open_store(uri) as s:
        runs = s.named("embedding-runs")
        assert len(s.embeddings("Strategy")) == 72
    assert len(runs) == 1 and runs[0]["id"] in res.output


def test_embed_command_json_and_errors(planted):
    uri, _ = planted
    res = CliRunner().invoke(_app(), ["embed", "--store", uri, "--epochs", "1", "--model", "transe", "--json",
                                      "--no-experience", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["config"]["model"] == "transe" and out["metrics"]["num_experiences"] == 0
    bad = CliRunner().invoke(_app(), ["embed", "--store", uri, "--model", "nope"])
    assert bad.exit_code == 1 and "unknown model 'nope'" in bad.output


def test_registered_as_automc_kb_embed(planted):
    from automc.cli.app import app

    uri, _ = planted
    res = CliRunner().invoke(app, ["kb", "embed", "--store", uri, "--epochs", "1", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["metrics"]["num_triples"] == 326
