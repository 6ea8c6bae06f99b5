"""`prism bench llm` at a tiny size: engines of the real SmolLM2 behind the fusion deployment's interface."""

import json

from typer.testing import CliRunner


def test_bench_llm_measures_each_engine_and_writes_the_report(tmp_path):
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["bench", "llm", "--engines", "torch-fp32,torch-bf16,ct2-fp32", "--batches", "1,2", "--max-new-tokens", "4",
                                      "--prompt-passages", "1", "--threads", "2", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    fp32, bf16, ct2 = report["engines"]
    assert (fp32["engine"], bf16["engine"], ct2["engine"]) == ("torch-fp32", "torch-bf16", "ct2-fp32")
    for e in (fp32, bf16, ct2):
        assert e["ttft_ms_batch1"] > 0 and e["prompt_tokens_mean"] > 50
        assert set(e["batches"]) == {"1", "2"} and e["batches"]["2"]["tokens_per_s"] > 0
    assert fp32["agreement_with_torch-fp32"] == {"prefix_agreement": 1.0, "identical_answers": 1.0}
    assert 0 <= bf16["agreement_with_torch-fp32"]["prefix_agreement"] <= 1
    assert ct2["agreement_with_torch-fp32"]["identical_answers"] == 1.0  # the same float32 weights, another runtime
    assert ct2["rss_mb"] > 100 and ct2["model"].endswith("/ct2-fp32")
    assert report["winner"] in ("torch-fp32", "torch-bf16", "ct2-fp32")
    assert json.loads((tmp_path / "llm-engines.json").read_text())["command"].startswith("prism bench llm")
    assert "| torch-bf16 |" in (tmp_path / "llm-engines.md").read_text()


def test_unknown_engine_is_a_one_line_error():
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["bench", "llm", "--engines", "vllm", "--no-write"])
    assert result.exit_code == 2 and "unknown LLM engine" in result.output
