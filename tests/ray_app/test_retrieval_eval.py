"""`prism eval retrieval` on a small wiki subset (ingested in-process through the same stages)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.corpus import wiki
from ray_app.evaluation.retrieval import metrics
from ray_app.ingest.job import ingest_inline


def test_metrics_for_known_ranks():
    m = metrics([1, 2, None, 10])
    assert m["r_at_1"] == 0.25 and m["r_at_10"] == 0.75
    assert abs(m["mrr"] - (1 + 0.5 + 0.1) / 4) < 1e-4
    assert abs(m["ndcg_at_10"] - (1 + 1 / 1.58496 + 1 / 3.45943) / 4) < 1e-3


def test_weighted_rrf():
    from ray_app.store import SearchHit, fuse_rrf

    def hits(*ids):
        return [SearchHit("chunk", i, "d", "t", "x", 0.0) for i in ids]

    a, b = hits("x", "y"), hits("y", "z")
    assert [h.id for h in fuse_rrf([a, b], 3, rrf_k=1)] == ["y", "x", "z"]  # y: 1/3 + 1/2
    assert [h.id for h in fuse_rrf([a, b], 3, rrf_k=1, weights=(1.0, 0.1))] == ["x", "y", "z"]  # x 1/2 > y 1/3+0.05


def test_eval_retrieval_reports_all_modes_and_writes_the_report(database_url, tmp_path, capsys):
    records = list(wiki.build_records())[::200]  # 51 articles across the alphabet
    totals = ingest_inline(records, database_url)
    assert totals["written"] == len(records)
    result = CliRunner().invoke(app, ["eval", "retrieval", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with_description = sum(1 for r in records if json.loads(r["metadata"])["description"])
    assert report["queries"] == with_description and report["corpus"]["documents"] == len(records)
    assert report["corpus"]["full"] is False and report["backend"] == "onnx"
    for mode in ("vector", "text", "hybrid"):
        m = report["modes"][mode]
        assert 0 <= m["r_at_1"] <= m["r_at_10"] <= 1 and m["mrr"] <= m["ndcg_at_10"] + 1e-9
    assert report["modes"]["vector"]["r_at_10"] >= 0.8
    assert report["modes"]["hybrid"]["r_at_10"] >= report["modes"]["vector"]["r_at_10"]
    sweep = report["text_weight_sweep"]
    for half in ("dev", "test"):  # text weight 0 ranks exactly as vector search does
        assert sweep["halves"][half]["0.0"] == sweep["halves"][half]["vector"]
    assert sweep["best_on_dev"] in sweep["weights"] and report["hybrid_text_weight"] == 0.25
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved["modes"] == report["modes"] and saved["command"] == "prism eval retrieval"
    assert "| hybrid |" in (tmp_path / "retrieval.md").read_text() and "| vector only |" in (tmp_path / "retrieval.md").read_text()

    # The job without the CLI (`python -m ray_app.evaluation.retrieval`): same numbers, same report files.
    from ray_app.evaluation.retrieval import main

    capsys.readouterr()
    returned = main(["--queries", "10", "--out", str(tmp_path / "job"), "--json"])
    assert json.loads(capsys.readouterr().out) == returned and returned["queries"] == 10
    saved = json.loads((tmp_path / "job" / "retrieval.json").read_text())
    assert saved["command"] == "prism eval retrieval --queries 10" and saved["modes"] == returned["modes"]


def test_eval_retrieval_without_wiki_documents_is_a_one_line_error(database_url, tmp_path):
    result = CliRunner().invoke(app, ["eval", "retrieval", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 2 and result.stderr.startswith("error: no wiki documents")
    assert not (tmp_path / "retrieval.json").exists()
