"""The assembled `prism` CLI: every command group mounts and is listed; user errors are one line, bugs keep their traceback."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from ray_app.cli import app, root
from ray_app.cli.common import mount

runner = CliRunner()


def test_every_command_group_imports_and_is_listed_in_help():
    for name, (module_name, _) in root._GROUPS.items():
        module = importlib.import_module(module_name)
        assert isinstance(getattr(module, "app", None), typer.Typer) or callable(getattr(module, "command", None)), name
    for name, (module_name, _) in root._JOBS.items():
        assert callable(importlib.import_module(module_name).main), name
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert set(root._GROUPS) | set(root._JOBS) | {"db", "search", "demo"} <= listed


# Each command that forwards to a job's main(argv): one of the job's flags, and arguments with a bad value.
FORWARDED = {
    "eval retrieval": ("--corpus-command", ["--queries", "0"]),
    "eval image-encoder": ("--curve", ["--checkpoint"]),
    "eval answers": ("--skip-missing", ["--n", "0"]),
    "bench ingest": ("--progress", ["--queries", "5"]),
    "bench embed": ("--no-write", ["--docs", "0"]),
    "bench serve": ("--no-profile", ["--users", "0"]),
    "ingest": ("--keep-index", ["corpus", "--num-cpus", "0"]),
}


@pytest.mark.parametrize("command", sorted(FORWARDED))
def test_a_forwarded_command_shows_its_jobs_help_and_rejects_a_bad_value_in_one_line(command):
    flag, bad = FORWARDED[command]
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"usage: prism {command} ") and flag in result.stdout and "--json" in result.stdout
    result = runner.invoke(app, [*command.split(), *bad, "--json"])
    assert result.exit_code == 2 and result.stdout == "" and isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: argument ") and lines[0].endswith(f"(see prism {command} --help)")


def test_prism_help_imports_no_job_module():
    """The forwarded commands import their job only when they run, so `prism --help` stays fast."""
    jobs = ["ray_app.evaluation.answers", "ray_app.benchmarks.serve", "ray_app.ingest.job"]
    code = ("import sys; from ray_app.cli.root import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            f"print([m for m in {jobs!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_mount_fails_loudly_when_a_module_is_missing_or_has_no_command():
    with pytest.raises(ModuleNotFoundError):
        mount(typer.Typer(), {"nothing": ("ray_app.cli.no_such_module", "missing")})
    with pytest.raises(TypeError, match="neither"):
        mount(typer.Typer(), {"common": ("ray_app.cli.common", "a module without a command")})


def test_user_error_prints_one_error_line_and_exits_2(tmp_path):
    result = runner.invoke(app, ["corpus", "build", str(tmp_path / "nope"), "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope'}"]


def test_empty_question_is_a_user_error():
    result = runner.invoke(app, ["ask", "   "])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("bug", [ValueError("an internal invariant broke"), KeyError("documents"),
                                 FileNotFoundError("/no/such/internal/file")])
def test_an_internal_bug_is_not_swallowed(monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr("ray_app.corpus.build.build_corpus", broken)
    result = runner.invoke(app, ["corpus", "build", "wiki"])
    assert result.exit_code == 1
    assert result.exception is bug
    assert "error:" not in result.stderr


def test_a_validation_error_other_than_settings_is_a_bug(monkeypatch):
    class Internal(BaseModel):
        n: int

    def broken(*args, **kwargs):
        Internal(n="many")

    monkeypatch.setattr("ray_app.corpus.build.build_corpus", broken)
    result = runner.invoke(app, ["corpus", "build", "wiki"])
    assert result.exit_code == 1 and isinstance(result.exception, ValidationError)
