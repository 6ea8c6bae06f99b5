"""`prism eval grounding`: the checker against the hand-labelled sample, on a small slice, and its input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ray_app.evaluation.grounding import DEFAULT_DATASET, confusion, half_of, load_sample


def test_sample_is_labelled_and_split_by_question():
    rows = load_sample(DEFAULT_DATASET)
    assert len(rows) >= 100
    assert {type(r["grounded"]) for r in rows} == {bool} and all(r["note"] for r in rows)
    halves = {}
    for r in rows:  # every answer to one question lands in the same half
        halves.setdefault(r["question_id"], set()).add(r["half"])
    assert all(len(h) == 1 for h in halves.values())
    assert {r["half"] for r in rows} == {"tune", "heldout"}
    assert half_of("f1a9c40462e0") == half_of("f1a9c40462e0")


def test_confusion_counts():
    m = confusion([True, True, False, False, True], [True, False, True, False, True])
    assert (m["true_positive"], m["false_positive"], m["false_negative"], m["true_negative"]) == (2, 1, 1, 1)
    assert m["precision_grounded"] == pytest.approx(2 / 3, abs=1e-4) and m["recall_grounded"] == pytest.approx(2 / 3, abs=1e-4)


def test_eval_cli_writes_the_report_keys_on_a_slice(tmp_path):
    from ray_app.cli import app

    out = tmp_path / "reports" / "grounding-check"
    result = CliRunner().invoke(app, ["eval", "grounding", "--limit", "30", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    report = json.loads(out.with_suffix(".json").read_text())
    for key in ("n", "precision_grounded", "recall_grounded", "baseline", "final", "split", "load_average"):
        assert key in report and key in printed
    assert report["n"] == report["final"]["heldout"]["n"] == report["split"]["heldout"]
    assert report["split"]["tune"] + report["split"]["heldout"] == 30
    assert report["baseline"]["heldout"]["n"] == report["n"] and report["final"]["ms_per_answer"] > 0
    assert "--limit 30" in report["command"] and report["notes"]
    assert "| final, held out |" in out.with_suffix(".md").read_text()


def test_eval_input_errors_are_one_line(tmp_path, capsys):
    from ray_app.evaluation.grounding import main

    with pytest.raises(SystemExit) as exited:
        main(["--dataset", str(tmp_path / "missing.jsonl"), "--json"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "missing.jsonl not found" in err and err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question_id": "q", "answer": "a", "passages": [], "grounded": "yes"}) + "\n")
    with pytest.raises(SystemExit):
        main(["--dataset", str(bad), "--no-write"])
    assert "boolean grounded label" in capsys.readouterr().err
