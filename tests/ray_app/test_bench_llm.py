"""`prism bench llm` at a tiny size: both precisions of the real SmolLM2 through the serving decoder."""

import json

from typer.testing import CliRunner


def test_bench_llm_measures_both_precisions_and_writes_the_report(tmp_path):
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["bench", "llm", "--batches", "1,2", "--max-new-tokens", "4",
                                      "--prompt-passages", "1", "--threads", "2", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    fp32, bf16 = report["engines"]
    assert (fp32["engine"], bf16["engine"]) == ("torch-fp32", "torch-bf16")
    for e in (fp32, bf16):
        assert e["ttft_ms_batch1"] > 0 and e["prompt_tokens_mean"] > 50
        assert set(e["batches"]) == {"1", "2"} and e["batches"]["2"]["tokens_per_s"] > 0
    assert fp32["agreement_with_torch-fp32"] == {"prefix_agreement": 1.0, "identical_answers": 1.0}
    assert 0 <= bf16["agreement_with_torch-fp32"]["prefix_agreement"] <= 1
    assert report["winner"] in ("torch-fp32", "torch-bf16")
    assert json.loads((tmp_path / "llm-engines.json").read_text())["command"].startswith("prism bench llm")
    assert "| torch-bf16 |" in (tmp_path / "llm-engines.md").read_text()


def test_unknown_engine_is_a_one_line_error():
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["bench", "llm", "--engines", "vllm", "--no-write"])
    assert result.exit_code == 2 and "unknown engine" in result.output
