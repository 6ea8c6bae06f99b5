"""`prism eval retrieval` on a small wiki subset (ingested in-process through the same stages)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.corpus import stamps, wiki
from ray_app.evaluation.retrieval import SETS, candidate_key, main, mask_title, metrics, split_of
from ray_app.ingest.job import ingest_inline
from ray_app.store.fusion import load_fusion_params


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


def test_eval_retrieval_reports_every_set_and_mode_and_writes_the_report(database_url, tmp_path, capsys):
    records = list(wiki.build_records())[::200]  # 51 articles across the alphabet
    stamps_records = list(stamps.build_records(limit=12, out_dir=tmp_path / "stamps"))
    totals = ingest_inline(records + stamps_records, database_url)
    assert totals["written"] == len(records) + len(stamps_records)
    result = CliRunner().invoke(app, ["eval", "retrieval", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with_description = sum(1 for r in records if json.loads(r["metadata"])["description"])
    assert report["queries"] == with_description and report["corpus"]["documents"] == len(records)
    assert report["corpus"]["full"] is False and report["backend"] == "onnx"
    assert set(report["sets"]) == set(SETS)
    for name, modes in report["sets"].items():
        assert set(modes) == {"vector", "text", "hybrid"}
        for m in modes.values():
            assert {"r_at_1", "r_at_10", "mrr", "ndcg_at_10", "n"} <= set(m) and m["n"] >= 1
            assert 0 <= m["r_at_1"] <= m["r_at_10"] <= 1 and m["mrr"] <= m["ndcg_at_10"] + 1e-9
        # dev + test are every query of the set, split by the target's hash
        assert modes["hybrid"]["n"] + report["sets_dev"][name]["hybrid"]["n"] > modes["hybrid"]["n"]
    assert report["sets"]["sft_question"]["vector"]["n"] + report["sets_dev"]["sft_question"]["vector"]["n"] == len(records)
    assert report["sets"]["caption_image"]["text"]["n"] + report["sets_dev"]["caption_image"]["text"]["n"] == 12
    assert report["modes"]["vector"]["r_at_10"] >= 0.8
    assert report["fusion"] == load_fusion_params().to_dict() and report["tuned"] is False
    assert set(report["latency_ms"]) == {"text", "vector", "hybrid"} and len(report["load_average"]["start"]) == 3
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved["sets"] == report["sets"] and saved["command"] == "prism eval retrieval"
    markdown = (tmp_path / "retrieval.md").read_text()
    assert "## masked_sentence" in markdown and "| hybrid |" in markdown and "| vector only |" in markdown

    # --tune chooses on the dev splits and freezes where it is told; the report then uses that fusion.
    capsys.readouterr()
    frozen = tmp_path / "fusion.json"
    returned = main(["--queries", "10", "--tune", "--fusion-out", str(frozen), "--out", str(tmp_path / "job"), "--json"])
    assert json.loads(capsys.readouterr().out) == returned and returned["queries"] == 10
    assert returned["sets"]["masked_sentence"]["text"]["n"] + returned["sets_dev"]["masked_sentence"]["text"]["n"] == 10
    chosen = load_fusion_params(frozen)
    assert returned["tuned"] and returned["fusion"] == chosen.to_dict() and chosen.chosen_on["split"] == "dev"
    dev, singles = returned["fusion_candidates_dev"], returned["sets_dev"]

    def objective(key):  # sets where it is within 0.005 of the better single mode, then mean MRR + R@10
        kept = sum(all(dev[s][key][m] >= max(singles[s]["vector"][m], singles[s]["text"][m]) - 0.005
                       for m in ("r_at_10", "mrr")) for s in SETS)
        return kept, round(sum(dev[s][key]["mrr"] + dev[s][key]["r_at_10"] for s in SETS), 9)

    assert objective(candidate_key(chosen)) == max(objective(key) for key in dev["description"])
    assert {"zscore@0.5", "zscore@0.5~2", "minmax@0.3~4", "rrf@0.25"} <= set(dev["description"])
    saved = json.loads((tmp_path / "job" / "retrieval.json").read_text())
    assert saved["command"] == "prism eval retrieval --tune --queries 10" and saved["sets"] == returned["sets"]


def test_split_is_fixed_by_the_document_and_masking_hides_the_title():
    assert [split_of(f"doc{i}") for i in range(6)] == [split_of(f"doc{i}") for i in range(6)]
    sides = [split_of(f"doc{i}") for i in range(1000)]
    assert 400 < sides.count("dev") < 600
    assert mask_title("Jupiter's moons orbit Jupiter.", "Jupiter") == "___'s moons orbit ___."


def test_eval_retrieval_without_wiki_documents_is_a_one_line_error(database_url, tmp_path):
    result = CliRunner().invoke(app, ["eval", "retrieval", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 2 and result.stderr.startswith("error: no wiki documents")
    assert not (tmp_path / "retrieval.json").exists()
