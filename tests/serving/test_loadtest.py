"""A short run of the Locust mix through `prism bench serve` (slow: asks decode on the CPU)."""

import json

import pytest
from typer.testing import CliRunner

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)


@pytest.mark.slow
def test_bench_serve_smoke(prism_app, tmp_path):
    from ray_app.cli import app

    out = tmp_path / "serve-smoke"
    result = CliRunner().invoke(app, ["bench", "serve", "--users", "5", "--duration", "10", "--url", prism_app.url,
                                      "--overhead-requests", "40", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["users"] == 5 and report["requests"] > 0
    assert report["endpoints"]["search"]["requests"] > 0 and report["endpoints"]["search"]["p95_ms"] > 0
    overhead = report["serve_overhead"]
    assert overhead["uvicorn"]["requests"] == overhead["serve"]["requests"] == 40
    assert out.with_suffix(".md").read_text().startswith("# Serve load test: 5 users")
    assert json.loads(out.with_suffix(".json").read_text())["endpoints"] == report["endpoints"]
