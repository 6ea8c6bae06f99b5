"""`prism rai report` on small data: a tiny store of real wiki biographies, a few neutral queries."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.corpus import wiki
from ray_app.ingest.job import ingest_inline
from ray_app.jsonl import write_jsonl

CONTRACT = ("annotation_error", "exposure", "counterfactual", "fairness_metrics", "mitigation")


@pytest.fixture()
def tiny_people_store(database_url):
    people = [r for r in wiki.build_records() if json.loads(r["metadata"])["category"] == "People"][::60]  # 31
    totals = ingest_inline(people, database_url)
    assert totals["written"] == len(people)
    return people


def run_report(tmp_path, *extra: str) -> dict:
    queries = write_jsonl([{"query": "a famous painter", "pool": "painter"},
                           {"query": "an important political leader", "pool": "politician|president|king|queen"}],
                          tmp_path / "queries.jsonl")
    out = tmp_path / "rai"
    result = CliRunner().invoke(app, ["rai", "report", "--out", str(out), "--queries", str(queries),
                                      "--recall-queries", "3", "--weights", "0.5,1.0", "--no-images", *extra,
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    report = json.loads((out / "report.json").read_text())
    assert set(CONTRACT) <= set(report)
    assert summary["annotation_error"] == {a: report["annotation_error"][a]["error_rate"] for a in ("gender", "region", "era")}
    return report | {"_markdown": (out / "report.md").read_text()}


def test_report_on_a_tiny_store_without_the_llm(tiny_people_store, tmp_path):
    report = run_report(tmp_path, "--pairs", "0")
    assert report["store"]["biographies"] == len(tiny_people_store)
    assert report["annotation_error"]["n"] >= 100 and 0 <= report["annotation_error"]["gender"]["error_rate"] <= 1
    exposure = report["exposure"]
    assert exposure["queries"] == 2 and exposure["k"] == 10
    for attribute in ("gender", "region", "era"):
        groups = exposure[attribute]["groups"]
        assert groups and abs(sum(g["pool_share"] for g in groups.values()) - 1) < 1e-3
    mitigation = report["mitigation"]
    assert set(mitigation["exposure_by_weight"]) == {"0.5", "1.0"}
    assert set(mitigation["recall"]) == {"description", "masked_sentence", "sft_question"}
    for block in mitigation["recall"].values():
        assert block["n"] == 3 and set(block["by_weight"]["0.5"]["r_at_10"]) == {"gender", "region", "era"}
    assert report["counterfactual"]["pairs"] == [] and "not run" in report["counterfactual"]["note"]
    assert set(report["model_cards"]) == {"llm", "adapter", "image_encoder"}
    assert any(d["name"] == "wiki" and "CC BY-SA" in d["licence"] for d in report["data_sheets"])
    assert report["mitigation_plan"] and report["command"].startswith("prism rai report")
    markdown = report["_markdown"]
    for section in ("## Model cards", "## Data sheets", "### Fairness of exposure", "## Fairness metrics",
                    "## Mitigation plan", "### Images: what can and cannot be audited offline"):
        assert section in markdown
    # every exposure ratio shown is the JSON's
    female = exposure["gender"]["groups"].get("female")
    if female and female["ratio"] is not None:
        assert f"| {female['ratio']:.3f} |" in markdown


def test_report_asks_counterfactual_pairs_through_the_pipeline(tiny_people_store, tmp_path):
    report = run_report(tmp_path, "--pairs", "3", "--max-new-tokens", "16", "--batch-size", "6")
    counterfactual = report["counterfactual"]
    assert len(counterfactual["pairs"]) == 3 and counterfactual["asks"] == 6
    assert {p["kind"] for p in counterfactual["pairs"]} == {"gender", "name", "age"}
    assert set(counterfactual["by_kind"]) == {"all", "gender", "name", "age"}
    asks = report["fairness_metrics"]["counterfactual_asks"]
    assert set(asks) == {"asker_gender", "asker_name", "asker_age"}
    assert asks["asker_gender"]["groups"] == {"male": 1, "female": 1}
