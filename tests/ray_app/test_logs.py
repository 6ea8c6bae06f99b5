"""Prism's logs (ray_app/telemetry/logs.py): JSON lines or text, switched by PRISM_LOG_FORMAT, with the ids bound
in the context; the CLI's one-line error for a bad format; a Ray job's driver and workers in JSON."""

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ray_app.telemetry import logs


@pytest.fixture
def restore_root():
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_bound_ids(restore_root, monkeypatch):
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    out = io.StringIO()
    assert logs.setup_logging(verbose=True, stream=out) == "json"
    log = logging.getLogger("ray_app.test_logs")
    log.info("outside")
    with logs.bind(ask_id="ask-1", request_id="req-1"):
        log.warning("inside %d", 7, extra={"outcome": "done"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("after")
    outside, inside, failed, after = _records(out)
    for rec in (outside, inside, failed, after):
        assert {"asctime", "levelname", "name", "message", "filename", "lineno", "process"} <= set(rec)
        assert rec["name"] == "ray_app.test_logs"
    assert "ask_id" not in outside and "ask_id" not in after
    assert inside["message"] == "inside 7" and inside["levelname"] == "WARNING"
    assert (inside["ask_id"], inside["request_id"], inside["outcome"]) == ("ask-1", "req-1", "done")
    assert failed["levelname"] == "ERROR" and "ValueError: boom" in failed["exc_text"]


def test_text_is_the_cli_default_and_setup_replaces_its_handler(restore_root, monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging(verbose=False, stream=first)
    assert logs.setup_logging(verbose=False, stream=second) == "text"
    logging.getLogger("ray_app.test_logs").warning("once")
    logging.getLogger("ray_app.test_logs").info("not at WARNING")
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("WARNING ray_app.test_logs: once")
    assert len(second.getvalue().splitlines()) == 1


def test_a_bad_format_is_a_one_line_cli_error(monkeypatch):
    from ray_app.cli import app

    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    result = CliRunner().invoke(app, ["corpus", "--help"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: PRISM_LOG_FORMAT must be json or text, not 'xml'"


def test_ray_logging_config_only_in_json_mode(monkeypatch):
    monkeypatch.setenv(logs.FORMAT_ENV, "text")
    assert logs.ray_logging_config() is None
    monkeypatch.setenv(logs.FORMAT_ENV, "JSON")
    config = logs.ray_logging_config()
    assert config.encoding == "JSON" and config.additional_log_standard_attrs == ["name"]


JOB = """
import logging, ray
from ray_app.cli.common import setup_logging
from ray_app.raystart import init_ray
setup_logging(verbose=True)
init_ray(num_cpus=1, join=False)

@ray.remote
def work():
    logging.getLogger("ray_app.test_job").warning("from a worker")

logging.getLogger("ray_app.test_job").warning("from the driver")
ray.get(work.remote())
ray.shutdown()
"""


def test_a_ray_job_logs_json_in_the_driver_and_its_workers(tmp_path):
    env = dict(os.environ, PRISM_LOG_FORMAT="json", RAY_DEDUP_LOGS="0")
    done = subprocess.run([sys.executable, "-c", JOB], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    ours = [line for line in lines if "ray_app.test_job" in line]
    records = [json.loads(line[line.index("{"):]) for line in ours]  # a worker's line may carry Ray's prefix
    assert sorted(r["message"] for r in records) == ["from a worker", "from the driver"], ours  # each once
    assert all(r["name"] == "ray_app.test_job" and r["levelname"] == "WARNING" for r in records)
    worker = next(r for r in records if r["message"] == "from a worker")
    assert {"job_id", "worker_id", "node_id", "task_name"} <= set(worker)  # Ray's context on a worker's record
