"""Which linears W8A16 hurts most in the served LLM, and the set `prism export trtllm` keeps unquantized by default.

    prism export trtllm-sensitivity [--passages 32] [--target 0.993] [--report docs/reports] [--json]
    python -m edge.trtllm_sensitivity --passages 32 --report docs/reports

It writes the model as an fp16 TensorRT-LLM checkpoint with ``quant_algo`` W8A16 and reads it back with
TensorRT-LLM's semantics (:mod:`edge.trtllm_reader`, fp32 activations) on the ``select`` split of wiki passages
(:func:`edge.trtllm.wiki_passages`; ``prism export trtllm --verify`` uses the disjoint ``verify`` split),
against Hugging Face fp32: first with one module type quantized at a time, then one layer, then it keeps
the most damaging of those groups (by KL divergence from the reference) in fp16, one more at a time, until the
top-1 agreement reaches ``--target``. ``edge.trtllm.DEFAULT_KEEP_FP16`` records the first set of the search
that reached the issue's 0.99 (on SmolLM2 the default 0.993 took every linear: nothing quantized).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from ray_app.errors import InputError
from ray_app.settings import get_settings


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog or "prism export trtllm-sensitivity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=32, help="Wiki passages of the select split (default 32).")
    parser.add_argument("--tokens", type=int, default=96, help="Tokens per passage (default 96).")
    parser.add_argument("--target", type=float, default=0.993,
                        help="Top-1 agreement on the select split at which the search stops (default 0.993: the "
                             "issue's 0.99 plus about two standard errors of 3,072 positions).")
    parser.add_argument("--report", type=Path, default=None, help="Write DIR/trtllm-sensitivity.{json,md}.")
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    return parser.parse_args(argv)


def quantization(keep: list[str]) -> dict:
    """The ``quantization`` section that keeps the linears ``keep`` names (fnmatch patterns) unquantized."""
    from edge.trtllm import TRTLLM_DEFAULT_EXCLUDED

    return {"quant_algo": "W8A16", "exclude_modules": [*TRTLLM_DEFAULT_EXCLUDED, *keep] if keep else []}


def measure(folder: Path, ids, reference, keep: list[str]) -> dict:
    """Agreement and engine weight size of the checkpoint read with ``keep`` unquantized."""
    from edge.trtllm import agreement
    from edge.trtllm_reader import CheckpointReader

    reader = CheckpointReader(folder, quantization=quantization(keep))
    return {**agreement(reader, ids, reference), "engine_weight_mb": round(reader.weight_bytes(per_token=False) / 2**20, 1)}


def search(folder: Path, ids, reference, layers: int, target: float) -> dict:
    """Quantize one group at a time (each module type, then each layer), then keep the worst groups in fp16 until
    the agreement reaches ``target``."""
    from edge.trtllm import LINEARS

    types = {f"*{kind}*": [f"*{other}*" for other in LINEARS if other != kind] for kind in LINEARS}
    per_layer = {f"transformer.layers.{n}.*": [f"transformer.layers.{m}.*" for m in range(layers) if m != n]
                 for n in range(layers)}
    alone = {}
    for group, keep in {**types, **per_layer}.items():
        alone[group] = measure(folder, ids, reference, keep)
        print(f"{group} alone: top-1 {alone[group]['top1_agreement']:.4f}, KL {alone[group]['kl_mean']:.2e}",
              file=sys.stderr, flush=True)
    order = sorted(alone, key=lambda g: -alone[g]["kl_mean"])
    steps, keep = [], []
    for group in order:
        keep = [*keep, group]
        steps.append({"keep": keep, **measure(folder, ids, reference, keep)})
        print(f"keep {len(keep)} groups: top-1 {steps[-1]['top1_agreement']:.4f}, "
              f"{steps[-1]['engine_weight_mb']} MB", file=sys.stderr, flush=True)
        if steps[-1]["top1_agreement"] >= target:
            break
    return {"quantized_alone": alone, "order": order, "steps": steps,
            "chosen": keep if steps and steps[-1]["top1_agreement"] >= target else None}


def run(passages: int, tokens: int, target: float) -> dict:
    import torch

    from edge.trtllm import reference_logits, wiki_passages, write_checkpoint
    from ray_app.models.llm import load_llm, resolve_adapter
    from ray_app.reports import load_average

    settings = get_settings()
    adapter, adapter_source = resolve_adapter(settings)
    llm = load_llm(settings.llm_model, adapter or "", settings, dtype="float32")
    started = time.perf_counter()
    ids = wiki_passages(llm.tokenizer, passages, tokens, "select")
    reference = reference_logits(llm.model, ids)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "w8"
        write_checkpoint(llm.model, folder, "float16", "W8A16")
        from edge.trtllm_reader import CheckpointReader

        baseline = {"stored_weights_unquantized": measure(folder, ids, reference, ["*"]),
                    "every_linear_quantized": measure(folder, ids, reference, [])}
        with torch.no_grad():
            found = search(folder, ids, reference, CheckpointReader(folder, quantize=False).config["num_hidden_layers"],
                           target)
    return {"model": settings.llm_model, "adapter": adapter, "adapter_source": adapter_source, "dtype": "float16",
            "quant_algo": "W8A16", "passages": passages, "tokens": int(ids.numel()), "split": "select",
            "target": target, **baseline, **found, "seconds": round(time.perf_counter() - started, 1),
            "load_average": load_average()}


def render_report(result: dict) -> str:
    def cells(m: dict) -> str:
        above = m["top1_agreement_above_margin"]
        return (f"{m['top1_agreement']:.4f} | {'-' if above is None else f'{above:.4f}'} | {m['kl_mean']:.2e} | "
                f"{m['engine_weight_mb']}")

    head = "| top-1 | top-1 where gap > margin | KL | engine weights MB |\n"
    alone = result["quantized_alone"]
    lines = [f"# W8A16 sensitivity of {result['model']} (edge.trtllm_sensitivity)\n",
             f"`{result['command']}`; JSON: [trtllm-sensitivity.json](trtllm-sensitivity.json). "
             f"{result['passages']} passages x {result['tokens'] // result['passages']} tokens of the **select** split "
             "(the `--verify` of `prism export trtllm` uses the disjoint verify split), fp16 checkpoint read back "
             "with TensorRT-LLM's weight-only int8 emulated, against Hugging Face fp32. Margin: "
             f"{result['every_linear_quantized']['margin']} logits between the fp32 top-2.\n",
             "| read back | " + head.lstrip("| ") + "|---|---|---|---|---|",
             f"| fp16, nothing quantized | {cells(result['stored_weights_unquantized'])} |",
             f"| fp16, W8A16 on every linear | {cells(result['every_linear_quantized'])} |\n",
             "One group quantized, everything else fp16, most damaging first:\n",
             "| quantized alone | " + head.lstrip("| ") + "|---|---|---|---|---|"]
    lines += [f"| `{g}` | {cells(alone[g])} |" for g in result["order"]]
    lines += ["", f"Kept in fp16, one group more a step, until top-1 reached {result['target']}:\n",
              "| groups kept | last added | " + head.lstrip("| ") + "|---|---|---|---|---|---|"]
    lines += [f"| {len(s['keep'])} | `{s['keep'][-1]}` | {cells(s)} |" for s in result["steps"]]
    chosen = result["chosen"]
    lines += ["", (f"Chosen: {', '.join(f'`{p}`' for p in chosen)}." if chosen else
                   f"No set of these groups reached {result['target']}."),
              f"Load average {result['load_average']}; {result['seconds']} s.\n"]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = parse_args(argv, prog)
    if args.passages < 1 or args.tokens < 8 or not 0 < args.target <= 1:
        raise InputError("--passages must be at least 1, --tokens at least 8 and --target in (0, 1]")
    result = run(args.passages, args.tokens, args.target)
    if args.report:
        from ray_app.reports import write_report

        argv_text = " ".join(argv if argv is not None else sys.argv[1:])
        write_report(args.report, "trtllm-sensitivity", result, render_report,
                     command=f"prism export trtllm-sensitivity {argv_text}")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
