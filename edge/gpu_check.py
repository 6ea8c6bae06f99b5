"""GPU check of the TensorRT-LLM checkpoint: the reader in bf16 on CUDA against Hugging Face, and decode speed.

    python -m edge.gpu_check [--model HF_FOLDER | --config CONFIG.json] [--out docs/reports] [--json]
    bash edge/gpu_check_device.sh prepare; (device) bash edge/gpu_check_device.sh      # the lent GPU machine

On a CUDA GPU (at most ~5 minutes): export the model as a bf16 TensorRT-LLM checkpoint (:mod:`edge.trtllm`),
read it with :mod:`edge.trtllm_reader` in bf16 on CUDA and compare its logits with Hugging Face's in fp32
(max |diff|, top-1 agreement; Hugging Face's own bf16 run is the yardstick), then time greedy decode at
batch 1 with the reader's KV cache against the memory-bandwidth bound (a measured device-to-device copy
÷ weight bytes read per token). With ``--config`` the weights are random in that config's exact shapes
(the real SmolLM2 is too large to carry to the lent machine; speed depends only on the shapes).
Without CUDA it records that no GPU was available. It writes its own section, ``edge_trtllm``, into
``docs/reports/gpu-check.json`` and a marked section of ``gpu-check.md``, keeping what other checks wrote.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from ray_app.reports import load_average

SECTION = "edge_trtllm"
MD_BEGIN, MD_END = "<!-- edge_trtllm: begin (python -m edge.gpu_check) -->", "<!-- edge_trtllm: end -->"
PROMPT = ("Frogs are amphibians that live in ponds, marshes and rainforests on every continent but Antarctica. "
          "They eat insects, and their tadpoles breathe through gills. Where do frogs live, and what do they eat?")
COMMAND = "python -m edge.gpu_check (bash edge/gpu_check_device.sh on the lent GPU machine)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge.gpu_check", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=None, help="A Hugging Face Llama folder (default: the served LLM).")
    source.add_argument("--config", type=Path, default=None, help="A Llama config.json: random weights in its shapes.")
    parser.add_argument("--new-tokens", type=int, default=128, help="Greedy tokens to decode (default 128).")
    parser.add_argument("--out", type=Path, default=Path("docs/reports"), help="Report folder (default docs/reports).")
    parser.add_argument("--json", action="store_true", help="Print the section as one JSON object.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        result = {"available": False, "reason": "no CUDA device on this machine (torch.cuda.is_available() is False)",
                  "host": platform.node(), "torch": torch.__version__}
    else:
        result = {"available": True, **run_check(args.model, args.config, args.new_tokens, "cuda")}
    result.update(command=COMMAND, load_average=load_average(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_section(args.out, result)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return result


def load_models(model_dir: Path | None, config_path: Path | None, device: str):
    """(Hugging Face fp32 model on ``device``, token ids of the prompt, a description of the weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if config_path is not None:
        config = LlamaConfig.from_json_file(str(config_path))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        ids = torch.randint(0, config.vocab_size, (1, 48))
        weights = f"random, in the shapes of {config_path} (seed 0)"
    else:
        from ray_app.models.llm import resolve_llm
        from ray_app.settings import get_settings

        folder = model_dir or resolve_llm(get_settings().llm_model)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")["input_ids"]
        weights = f"{folder}"
    return model.eval().to(device), ids.to(device), weights


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth_gb_s(device: str, megabytes: int = 1024, repeats: int = 10) -> float:
    """Device memory bandwidth measured as a device-to-device copy (bytes read + written per second)."""
    import torch

    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    synchronize(device)
    return 2 * src.numel() * repeats / (time.perf_counter() - started) / 1e9


def decode_tokens_per_s(step, ids, new_tokens: int, device: str) -> float:
    """Greedy decode at batch 1: ``step(ids, cache) -> logits``; tokens/s after the prefill."""
    import torch

    cache: list = []
    with torch.no_grad():
        token = step(ids, cache)[:, -1:].argmax(-1)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(new_tokens):
            token = step(token, cache)[:, -1:].argmax(-1)
        synchronize(device)
    return new_tokens / (time.perf_counter() - started)


def run_check(model_dir: Path | None, config_path: Path | None, new_tokens: int, device: str = "cuda",
              copy_mb: int = 1024) -> dict:
    """The parity and decode measurements on ``device`` (the tests run it on the CPU with a tiny config)."""
    import torch

    from edge.trtllm import write_checkpoint
    from edge.trtllm_reader import CheckpointReader

    started = time.perf_counter()
    model, ids, weights = load_models(model_dir, config_path, device)
    with torch.no_grad():
        reference = model(ids).logits.float()
        hf_bf16 = model.to(torch.bfloat16)(ids).logits.float()
    parity = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(model, Path(tmp) / "bf16", "bfloat16", None)
        write_checkpoint(model, Path(tmp) / "w8", "bfloat16", "W8A16")
        readers = {"bf16": CheckpointReader(Path(tmp) / "bf16", dtype=torch.bfloat16, device=device),
                   "w8a16_emulated": CheckpointReader(Path(tmp) / "w8", dtype=torch.bfloat16, device=device)}
    with torch.no_grad():
        for name, reader in readers.items():
            ours = reader(ids).float()
            parity[name] = {"max_abs_diff": (ours - reference).abs().max().item(),
                            "top1_agreement": (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()}
    parity["hf_bf16_yardstick"] = {"max_abs_diff": (hf_bf16 - reference).abs().max().item(),
                                   "top1_agreement": (hf_bf16.argmax(-1) == reference.argmax(-1)).float().mean().item()}
    reader = readers["bf16"]
    bandwidth = copy_bandwidth_gb_s(device, copy_mb)
    bytes_per_token = reader.weight_bytes()
    reader_tps = decode_tokens_per_s(reader, ids, new_tokens, device)
    hf_tps = decode_tokens_per_s(lambda x, cache: hf_step(model, x, cache), ids, new_tokens, device)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        name = f"{props.name}, {props.total_memory // 2**20} MiB"
    else:
        name = f"{platform.processor() or platform.machine()} CPU"
    bound = bandwidth * 1e9 / bytes_per_token
    return {"device": name, "torch": torch.__version__,
            "weights": weights, "prompt_tokens": ids.shape[1], "parity_vs_hf_fp32": parity,
            "decode": {"new_tokens": new_tokens, "batch": 1, "reader_bf16_tokens_per_s": round(reader_tps, 1),
                       "hf_bf16_tokens_per_s": round(hf_tps, 1), "weight_bytes_per_token": bytes_per_token,
                       "copy_bandwidth_gb_s": round(bandwidth, 1), "bandwidth_bound_tokens_per_s": round(bound, 1),
                       "share_of_bound": round(reader_tps / bound, 4)},
            "seconds": round(time.perf_counter() - started, 1)}


def hf_step(model, ids, cache: list):
    """One Hugging Face forward with its own KV cache kept in ``cache[0]`` (the same loop as the reader's)."""
    out = model(ids, past_key_values=cache[0] if cache else None, use_cache=True)
    cache[:] = [out.past_key_values]
    return out.logits


def render_section(result: dict) -> str:
    lines = [MD_BEGIN, "## TensorRT-LLM checkpoint on CUDA (edge/gpu_check.py)", ""]
    if not result["available"]:
        lines += [f"Not run: {result['reason']} (host `{result['host']}`, {result['measured_at']}; load average "
                  f"{result['load_average']}). This task had no GPU lent to it. The prepared check is "
                  "`bash edge/gpu_check_device.sh prepare`, then `bash edge/gpu_check_device.sh` on a CUDA machine "
                  "(under 5 minutes): the checkpoint reader in bf16 on CUDA against Hugging Face's fp32 logits, and "
                  "greedy decode tokens/s against the memory-bandwidth bound.", MD_END, ""]
        return "\n".join(lines)
    d = result["decode"]
    lines += [f"{result['device']}; {result['torch']}; weights: {result['weights']}; {result['prompt_tokens']}-token "
              f"prompt; load average {result['load_average']}; {result['seconds']} s.", "",
              "| run | max abs logit diff vs HF fp32 | top-1 agreement |", "|---|---|---|"]
    lines += [f"| {name} | {p['max_abs_diff']:.4g} | {p['top1_agreement']:.3f} |"
              for name, p in result["parity_vs_hf_fp32"].items()]
    lines += ["", f"Decode at batch 1, {d['new_tokens']} tokens: reader {d['reader_bf16_tokens_per_s']} tok/s, Hugging "
              f"Face bf16 {d['hf_bf16_tokens_per_s']} tok/s; bound {d['bandwidth_bound_tokens_per_s']} tok/s "
              f"({d['copy_bandwidth_gb_s']} GB/s copy ÷ {d['weight_bytes_per_token'] / 2**20:.1f} MiB per token), "
              f"{100 * d['share_of_bound']:.1f} % of it. Eager PyTorch at batch 1 is bound by kernel launches, "
              "not by memory: the bound is what a TensorRT engine (fused kernels, CUDA graphs) can approach.",
              MD_END, ""]
    return "\n".join(lines)


def write_section(out_dir: Path, result: dict) -> None:
    """Put ``result`` under ``edge_trtllm`` in gpu-check.json and its rendering between the markers of gpu-check.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gpu-check.json", out_dir / "gpu-check.md"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    report[SECTION] = result
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    text = md_path.read_text() if md_path.exists() else "# GPU checks\n"
    if MD_BEGIN in text and MD_END in text:
        text = text[:text.index(MD_BEGIN)] + text[text.index(MD_END) + len(MD_END):].lstrip("\n")
    md_path.write_text(text.rstrip("\n") + "\n\n" + render_section(result))


if __name__ == "__main__":
    main()
