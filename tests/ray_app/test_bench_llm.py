"""`prism bench llm` at a tiny size: engines of the real SmolLM2 behind the fusion deployment's interface."""

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from ray_app.benchmarks.llm import pick_winner, run_closed_loop


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
        assert e["batches"]["1"]["prompts"] == e["batches"]["2"]["prompts"] == 2  # the same work at every batch
        assert e["best_batch"] in (1, 2) and e["quality"] is None
    assert (fp32["batching"], ct2["batching"]) == ("continuous", "static")
    assert fp32["agreement_with_torch-fp32"] == {"prefix_agreement": 1.0, "identical_answers": 1.0}
    assert 0 <= bf16["agreement_with_torch-fp32"]["prefix_agreement"] <= 1
    assert ct2["agreement_with_torch-fp32"]["identical_answers"] == 1.0  # the same float32 weights, another runtime
    assert ct2["rss_mb"] > 100 and ct2["model"].endswith("/ct2-fp32")
    assert report["winner"] in ("torch-fp32", "torch-bf16", "ct2-fp32") and "speed only" in report["winner_basis"]
    assert json.loads((tmp_path / "llm-engines.json").read_text())["command"].startswith("prism bench llm")
    assert "| torch-bf16 |" in (tmp_path / "llm-engines.md").read_text()


def test_unknown_engine_is_a_one_line_error():
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["bench", "llm", "--engines", "vllm", "--no-write"])
    assert result.exit_code == 2 and "unknown LLM engine" in result.output


class CountingEngine:
    """Stands in for an engine under the closed-loop runner: each answer is ``max_new_tokens`` tokens 20 ms
    apart; it records how many answers were streaming at once."""

    def __init__(self):
        self.generated_tokens = self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    def submit(self, prompt: str, max_new_tokens: int):
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return CountingStream(self, int(prompt), max_new_tokens)


class CountingStream:
    def __init__(self, engine: CountingEngine, first: int, n: int):
        self.engine, self.first, self.n, self.tokens = engine, first, n, []

    def __iter__(self):
        for i in range(self.n):
            time.sleep(0.02)
            self.tokens.append(self.first + i)
            with self.engine.lock:
                self.engine.generated_tokens += 1
            yield "x"
        with self.engine.lock:
            self.engine.in_flight -= 1


@pytest.mark.parametrize("in_flight", [1, 3, 10])
def test_closed_loop_answers_every_prompt_with_at_most_n_in_flight(in_flight):
    engine = CountingEngine()
    prompts = [str(100 * i) for i in range(10)]
    run = run_closed_loop(engine, prompts, in_flight, max_new_tokens=3)
    assert engine.peak == in_flight and engine.in_flight == 0
    assert run["tokens"] == 30 and run["token_ids"] == [[100 * i, 100 * i + 1, 100 * i + 2] for i in range(10)]
    # each TTFT is its own answer's first token (~20 ms), not the wait before its submit
    assert len(run["ttft_s"]) == 10 and max(run["ttft_s"]) < 0.25
    assert run["wall_s"] >= 0.06 * -(-10 // in_flight) * 0.9
    with pytest.raises(ValueError, match="in_flight"):
        run_closed_loop(engine, prompts, 0, 3)


def test_closed_loop_raises_an_answers_error():
    class Failing(CountingEngine):
        def submit(self, prompt, max_new_tokens):
            raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError, match="decode failed"):
        run_closed_loop(Failing(), ["1", "2", "3"], 2, 3)


def test_winner_is_the_fastest_within_two_points_of_fp32_and_the_default_batches_continuously():
    def engine(name, speed, batching, grounding, rouge):
        quality = None if grounding is None else {"grounding_rate": grounding, "rouge_l": rouge}
        return {"engine": name, "answers_per_s_best": speed, "batching": batching, "quality": quality}

    engines = [engine("torch-fp32", 1.0, "continuous", 0.70, 0.60), engine("torch-bf16", 1.2, "continuous", 0.69, 0.59),
               engine("ct2-int8", 2.0, "static", 0.65, 0.60), engine("ct2-fp32", 1.5, "static", 0.70, 0.61),
               engine("llamacpp-q4_1", 3.0, "single", None, None)]
    picked = pick_winner(engines)
    assert (picked["winner"], picked["fastest"], picked["default_engine"]) == ("ct2-fp32", "llamacpp-q4_1", "torch-bf16")
    assert picked["eligible"] == ["torch-fp32", "torch-bf16", "ct2-fp32"]
    assert engines[2]["quality"]["within_tolerance"] is False and engines[2]["quality"]["grounding_delta_points"] == -5.0
    for e in engines:
        e["quality"] = None
    speed_only = pick_winner(engines)
    assert speed_only["winner"] == "llamacpp-q4_1" and "speed only" in speed_only["winner_basis"]
