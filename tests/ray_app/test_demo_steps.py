"""`prism demo`'s steps: output goes to a log under $PRISM_HOME/logs/demo, the terminal gets one line per step,
and a failed step shows its log's last lines and path. (The whole demo runs in tests/e2e/test_demo.py.)"""

from __future__ import annotations

import sys

import pytest

from ray_app.cli import demo
from tests.conftest import reset_settings


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_HOME", str(tmp_path / "home"))
    reset_settings()
    yield tmp_path / "home"
    reset_settings()


def test_run_logged_keeps_stdout_and_stderr_in_the_log(tmp_path):
    log = tmp_path / "logs" / "step.log"
    script = "import sys; print('{\"ok\": 1}'); print('worker noise', file=sys.stderr); sys.exit(3)"
    code, stdout = demo.run_logged([sys.executable, "-c", script], log)
    assert code == 3 and stdout == ['{"ok": 1}\n']
    text = log.read_text()
    assert '{"ok": 1}' in text and "worker noise" in text and text.rstrip().endswith("[exit 3]")


def test_a_step_logs_to_a_file_and_prints_one_line(home, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_SOURCES", ("photos",))
    built = demo.run_step("corpus", "demo corpus", demo.build_demo_corpus)
    assert built["photos"] > 10
    log = home / "logs" / "demo" / "corpus.log"
    assert "corpus build photos" in log.read_text() and "[exit 0]" in log.read_text()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("✓ demo corpus: built photos"), lines

    assert demo.run_step("corpus", "demo corpus", demo.build_demo_corpus) == {}  # the second run reuses the shards
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("✓ demo corpus: already built (photos)"), lines


def test_a_failing_step_prints_the_end_of_its_log_and_its_path(home, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_SOURCES", ("no-such-source",))
    with pytest.raises(demo.StepFailed) as failed:
        demo.run_step("corpus", "demo corpus", demo.build_demo_corpus)
    log = home / "logs" / "demo" / "corpus.log"
    assert failed.value.log_path == log and failed.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("✗ demo corpus failed")
    assert "error: no such file or folder: no-such-source" in err  # the command's own last line, from the log
    assert f"full log: {log}" in err
