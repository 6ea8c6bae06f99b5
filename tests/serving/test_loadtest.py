"""The load test: its request mix is data beside the locustfile, the report re-renders from its JSON,
and short runs of the Locust mix through `prism bench serve` and `--capacity` (slow: asks decode on the CPU)."""

import ast
import json
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.serving.harness import free_port, prism_app_fixture  # noqa: F401  (registers `prism_app`)

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def test_the_locustfile_imports_nothing_of_prism_and_the_benchmark_reads_its_mix():
    from ray_app.benchmarks.serve import load_mix

    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(LOCUSTFILE.read_text()))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imported.isdisjoint({"ray_app", "serving", "training", "edge"})
    mix = load_mix(LOCUSTFILE)
    assert len(mix["questions"]) >= 10 and len(mix["searches"]) >= 10 and mix["image_questions"]
    assert mix["max_new_tokens"] == 48


def test_load_max_new_tokens_is_a_setting(monkeypatch):
    from ray_app.settings import Settings

    assert Settings().load_max_new_tokens is None  # the mix's own then
    monkeypatch.setenv("PRISM_LOAD_MAX_NEW_TOKENS", "16")
    assert Settings().load_max_new_tokens == 16


def test_serve_report_rerenders_from_its_json_and_leaves_the_json_alone(tmp_path):
    from ray_app.benchmarks.serve import rerender

    for suffix in (".json", ".md"):
        shutil.copy(REPO / "docs" / "reports" / f"serve-100users{suffix}", tmp_path / f"serve-100users{suffix}")
    before = (tmp_path / "serve-100users.json").read_bytes()
    md = rerender(tmp_path / "serve-100users")
    assert (tmp_path / "serve-100users.json").read_bytes() == before  # the notes are the run's
    assert md.read_text() == (REPO / "docs" / "reports" / "serve-100users.md").read_text()


def test_bench_serve_without_an_app_or_a_mix_is_a_one_line_error(tmp_path):
    from ray_app.cli import app

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["bench", "serve", "--url", url, "--locustfile", str(LOCUSTFILE)])
    assert result.exit_code == 2 and result.output.startswith(f"error: no Prism app at {url}")
    result = CliRunner().invoke(app, ["bench", "serve", "--url", url, "--locustfile", str(tmp_path / "locustfile.py")])
    assert result.exit_code == 2 and result.output.startswith("error: no Locust file")


@pytest.mark.slow
def test_bench_serve_smoke(prism_app, tmp_path, monkeypatch):
    from ray_app.cli import app

    monkeypatch.setenv("PRISM_API_KEY", prism_app.key)  # the Locust file sends it

    out = tmp_path / "serve-smoke"
    result = CliRunner().invoke(app, ["bench", "serve", "--users", "5", "--duration", "10", "--url", prism_app.url,
                                      "--overhead-requests", "40", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["users"] == 5 and report["requests"] > 0
    assert "shed_share" in report and "ask_ttft_p95_ms_admitted" in report
    assert report["endpoints"]["search"]["requests"] > 0 and report["endpoints"]["search"]["p95_ms"] > 0
    overhead = report["serve_overhead"]
    assert overhead["uvicorn"]["requests"] == overhead["serve"]["requests"] == 40
    assert out.with_suffix(".md").read_text().startswith("# Serve load test: 5 users")
    assert json.loads(out.with_suffix(".json").read_text())["endpoints"] == report["endpoints"]


# What docs/reports/serve-capacity.json promises (issue 15's report shape).
CAPACITY_STEP_KEYS = {"users", "offered_asks_per_s", "admitted_asks_per_s", "shed_share", "ask_ttft_p50_ms_admitted",
                      "ask_ttft_p95_ms_admitted", "ask_total_p95_ms", "search_p95_ms", "errors_4xx", "errors_5xx",
                      "client_timeouts"}


@pytest.mark.slow
def test_bench_serve_capacity_at_a_tiny_size_counts_sheds_as_sheds(prism_app, tmp_path, monkeypatch):
    from ray_app.cli import app

    # Short think times: 12 users then want more asks at once than the test app's 4 + 2 places.
    monkeypatch.setenv("PRISM_LOAD_THINK_S", "0,0.5")
    monkeypatch.setenv("PRISM_API_KEY", prism_app.key)
    refused_before = httpx.get(f"{prism_app.url}/healthz", timeout=30).json()["admission"]["refused"]
    out = tmp_path / "serve-capacity"
    result = CliRunner().invoke(app, ["bench", "serve", "--capacity", "--steps", "2,12", "--step-duration", "8",
                                      "--url", prism_app.url, "--no-profile", "--bare-batches", "1,2",
                                      "--client-timeout", "60", "--warmup", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    refused = httpx.get(f"{prism_app.url}/healthz", timeout=30).json()["admission"]["refused"] - refused_before
    steps = report["steps"]
    assert [s["users"] for s in steps] == [2, 12] and all(CAPACITY_STEP_KEYS <= set(s) for s in steps)
    assert all(s["errors_5xx"] == 0 and s["client_timeouts"] == 0 for s in steps)
    # Every ask the gate refused reached the client as a shed (503 + Retry-After), not as a failure.
    sheds = sum(s["outcomes"]["ask"]["shed"] for s in steps)
    assert sheds > 0 and sheds == refused and steps[1]["shed_share"] > 0
    assert steps[1]["admitted_asks_per_s"] > 0 and steps[1]["ask_ttft_p95_ms_admitted"] > 0
    assert report["bare_answers_per_s"] > 0 and report["serve_efficiency"] > 0
    assert report["compute_bound_answers_per_s"] > report["bare_answers_per_s"]
    assert isinstance(report["answers_per_s_at_slo"], float) and len(report["load_average"]) == 3
    assert json.loads(out.with_suffix(".json").read_text())["steps"] == steps
    assert out.with_suffix(".md").read_text().startswith("# Serve capacity: 2, 12 users, 8 s each")
