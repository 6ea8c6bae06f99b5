"""Settings validation and the `prism db` commands through the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.settings import Settings

runner = CliRunner()


def test_malformed_database_url_is_rejected(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://nobody@host/db")
    with pytest.raises(ValueError, match="postgresql://"):
        Settings()


def test_malformed_database_url_gives_one_line_cli_error(monkeypatch):
    from tests.conftest import reset_settings

    monkeypatch.setenv("DATABASE_URL", "not-a-url")
    reset_settings()
    result = runner.invoke(app, ["db", "status", "--json"])
    reset_settings()
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().startswith("error: invalid setting DATABASE_URL")
    assert len(result.stderr.strip().splitlines()) == 1


def test_db_status_json_round_trip(database_url):
    result = runner.invoke(app, ["db", "status", "--json"])
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) == {"url", "postgres", "pgvector", "documents", "chunks", "images"}
    assert status["url"] == database_url
    assert status["postgres"].startswith("16")
    assert status["pgvector"] == "0.6.2"
    assert (status["documents"], status["chunks"], status["images"]) == (0, 0, 0)


def test_db_up_with_database_url_uses_that_server(database_url):
    result = runner.invoke(app, ["db", "up", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert "DATABASE_URL is set" in out["message"] and out["url"] == database_url
    down = json.loads(runner.invoke(app, ["db", "down", "--json"]).stdout)
    assert "does not stop external servers" in down["message"]


def test_embedded_up_status_down(tmp_path, monkeypatch):
    """The embedded server's whole life cycle under a fresh PRISM_HOME."""
    from tests.conftest import reset_settings

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PRISM_HOME", str(tmp_path / "home"))
    reset_settings()
    try:
        up = runner.invoke(app, ["db", "up", "--json"])
        assert up.exit_code == 0, up.stderr
        assert json.loads(up.stdout)["pgvector"] == "0.6.2"
        status = runner.invoke(app, ["db", "status", "--json"])
        assert json.loads(status.stdout)["documents"] == 0
        down = runner.invoke(app, ["db", "down", "--json"])
        assert json.loads(down.stdout)["message"] == "stopped"
        after = runner.invoke(app, ["db", "status", "--json"])
        assert after.exit_code == 2 and "prism db up" in after.stderr
        again = runner.invoke(app, ["db", "up", "--json"])  # a restart reuses the data folder
        assert again.exit_code == 0, again.stderr
        assert json.loads(runner.invoke(app, ["db", "status", "--json"]).stdout)["documents"] == 0
    finally:
        runner.invoke(app, ["db", "down"])
        reset_settings()


def test_the_llm_leaves_one_core_to_the_rest_of_the_graph(monkeypatch):
    from ray_app.settings import default_fusion_threads

    assert [default_fusion_threads(c) for c in (None, 1, 2, 16)] == [1, 1, 1, 15]
    monkeypatch.delenv("PRISM_FUSION_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings().fusion_threads == 7
    monkeypatch.setenv("PRISM_FUSION_THREADS", "3")
    assert Settings().fusion_threads == 3
