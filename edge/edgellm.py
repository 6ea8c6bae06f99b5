"""Export the served LLM for TensorRT Edge-LLM (Jetson Orin/Thor): ONNX + runtime files + ``build_engine.sh``.

    make edge-tools                                   # once: the exporter's own pinned virtual environment
    prism export edgellm --out ./edgellm [--dtype float16] [--max-input-len 1024] [--max-kv-cache 4096] [--json]
    python -m edge.edgellm --out ./edgellm

NVIDIA's exporter (PyPI ``tensorrt-edgellm``, its ``[export]`` extra) pins torch, transformers and onnx
versions that must never enter Prism's ``.venv``, so it runs as a child process of the interpreter in
``PRISM_EDGE_TOOLS`` (default ``.prism-edge-tools``, made by ``make edge-tools``). It exports offline, on the
CPU, from a local Hugging Face folder: the served SmolLM2, with the adapter merged (float32) when one is
configured or trained, and its chat template supplied (``chat_template.jinja`` and ``tokenizer_config.json``).
The output is ``llm/`` (``model.onnx`` + ``model.onnx.data``, ``config.json``, ``embedding.safetensors``,
tokenizer, ``chat_template.jinja``), ``build_engine.sh`` (Edge-LLM's C++ ``llm_build``, run on the device)
and ``prism_export.json`` (sources, the tools' versions, the ONNX inputs and outputs, each file's sha256).
TensorRT engines are built on the device only; nothing TensorRT runs here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edge.export import ExportError, file_entries, merged_llm_dir, source_key
from ray_app.errors import InputError
from ray_app.models.errors import ModelNotAvailable
from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)
TOOLS_PACKAGE = "tensorrt-edgellm"
TOOLS_VERSIONS = ("tensorrt-edgellm", "torch", "transformers", "onnx", "onnxscript", "safetensors", "numpy")
DTYPES = ("float16", "bfloat16")
# What the HF folder handed to the exporter holds (the weights are linked, not copied).
SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog or "prism export edgellm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Export folder (default: $PRISM_HOME/edge/edgellm-<dtype>).")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="ONNX weight dtype (default float16).")
    parser.add_argument("--max-input-len", type=int, default=1024, help="build_engine.sh: --maxInputLen (default 1024).")
    parser.add_argument("--max-kv-cache", type=int, default=4096,
                        help="KV-cache capacity in tokens: the exporter's --max-kv-cache-capacity and build_engine.sh's "
                             "--maxKVCacheCapacity (default 4096).")
    parser.add_argument("--max-batch", type=int, default=1, help="build_engine.sh: --maxBatchSize (default 1).")
    parser.add_argument("--tools", type=Path, default=None,
                        help="The exporter's virtual environment (default: PRISM_EDGE_TOOLS, i.e. .prism-edge-tools).")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds the exporter may run (default 1800).")
    parser.add_argument("--json", action="store_true", help="Print a summary as one JSON object.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = parse_args(argv, prog)
    settings = get_settings()
    for name in ("max_input_len", "max_kv_cache", "max_batch"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_input_len > args.max_kv_cache:
        raise InputError("--max-input-len must not exceed --max-kv-cache")
    out = args.out or settings.home / "edge" / f"edgellm-{args.dtype}"
    limits = {"max_batch_size": args.max_batch, "max_input_len": args.max_input_len, "max_kv_cache_capacity": args.max_kv_cache}
    summary = export_edgellm(out, settings, dtype=args.dtype, limits=limits, tools=args.tools, timeout=args.timeout)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        print(f"TensorRT Edge-LLM export {out} ({summary['dtype']}, {summary['onnx_mb']} MB ONNX, adapter: "
              f"{summary['adapter'] or 'none'}); on the device: bash {out}/build_engine.sh", file=sys.stderr)
    return summary


# ------------------------------------------------------------------ the tools environment
def tools_python(settings: Settings, tools: Path | None = None) -> Path:
    """The interpreter of the exporter's virtual environment.

    Raises:
        ModelNotAvailable: the environment or the exporter in it is missing.
    """
    folder = Path(tools or settings.edge_tools)
    python = folder / "bin" / "python"
    if not python.exists() or not list((folder / "lib").glob("python3*/site-packages/tensorrt_edgellm")):
        raise ModelNotAvailable(f"the TensorRT Edge-LLM exporter is not installed in {folder}: run `make edge-tools` "
                                "(or set PRISM_EDGE_TOOLS to such a virtual environment)")
    return python


def tools_versions(python: Path) -> dict[str, str | None]:
    """The exporter environment's package versions (read by its own interpreter)."""
    code = ("import json, sys, importlib.metadata as m\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    done = subprocess.run([str(python), "-c", code, *TOOLS_VERSIONS], capture_output=True, text=True, env=tools_env(), timeout=120)
    if done.returncode != 0:
        raise ExportError(f"the exporter environment {python} does not start: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def tools_env() -> dict[str, str]:
    """The child's environment: offline, and nothing of Prism's interpreter (PYTHONPATH, VIRTUAL_ENV) leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# ------------------------------------------------------------------ the source folder
def chat_template(folder: Path) -> str | None:
    """The model's chat template: ``chat_template.jinja`` (transformers 5) or ``tokenizer_config.json``'s field."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    return template if isinstance(template, str) else None


def stage_source(folder: Path, staging: Path) -> Path:
    """A Hugging Face folder for the exporter: config and tokenizer copied, weights linked, the chat template in
    both places the exporter and Edge-LLM's runtime look (``chat_template.jinja`` and ``tokenizer_config.json``).

    Raises:
        ExportError: the model has no chat template (Edge-LLM's runtime formats every request with one).
    """
    template = chat_template(folder)
    if not template:
        raise ExportError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json): "
                          "TensorRT Edge-LLM needs one")
    staging.mkdir(parents=True)
    for name in SOURCE_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, staging / name)
    for weights in folder.glob("*.safetensors*"):
        (staging / weights.name).symlink_to(weights.resolve())
    (staging / "chat_template.jinja").write_text(template)
    config_path = staging / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return staging


def llm_folder(settings: Settings) -> tuple[Path, str | None, str]:
    """The Hugging Face folder to export (the adapter merged into a cached float32 copy), the adapter and its source."""
    from ray_app.models.llm import resolve_adapter, resolve_llm

    adapter, adapter_source = resolve_adapter(settings)
    folder = resolve_llm(settings.llm_model, settings)
    if adapter:
        if not Path(adapter, "adapter_config.json").exists():
            raise ModelNotAvailable(f"adapter folder {adapter!r} has no adapter_config.json (set PRISM_LLM_ADAPTER)")
        folder = merged_llm_dir(folder, adapter, source_key(folder, adapter), settings)
    return folder, adapter, adapter_source


# ------------------------------------------------------------------ the export
def build_script(limits: dict) -> str:
    """``build_engine.sh``: Edge-LLM's C++ engine builder on ``llm/``, run on the Jetson."""
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine of this TensorRT Edge-LLM export on the device (Jetson Orin / Thor with JetPack,
# TensorRT Edge-LLM built from source there). Written by `prism export edgellm`.
#   EDGELLM_BUILD=/path/to/TensorRT-Edge-LLM/build bash build_engine.sh [ENGINE_DIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ENGINE=${{1:-$HERE/engine}}
BUILD=${{EDGELLM_BUILD:-$HOME/TensorRT-Edge-LLM/build}}
LLM_BUILD=$BUILD/examples/llm/llm_build
[ -x "$LLM_BUILD" ] || {{ echo "llm_build not found at $LLM_BUILD: build TensorRT Edge-LLM on this device and set EDGELLM_BUILD" >&2; exit 2; }}
"$LLM_BUILD" --onnxDir "$HERE/llm" --engineDir "$ENGINE/llm" \\
  --maxBatchSize "${{MAX_BATCH_SIZE:-{limits['max_batch_size']}}}" \\
  --maxInputLen "${{MAX_INPUT_LEN:-{limits['max_input_len']}}}" \\
  --maxKVCacheCapacity "${{MAX_KV_CACHE_CAPACITY:-{limits['max_kv_cache_capacity']}}}"
echo "engine: $ENGINE/llm (run it with $BUILD/examples/llm/llm_inference --engineDir $ENGINE/llm ...)"
"""


def onnx_signature(path: Path) -> dict:
    """The ONNX graph's inputs and outputs (name, element type, shape with symbolic dims), weights not loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        return [{"name": v.name, "type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output),
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import}, "nodes": len(model.graph.node)}


def run_exporter(python: Path, source: Path, out: Path, dtype: str, limits: dict, timeout: float) -> str:
    """Run ``tensorrt_edgellm.scripts.export`` (LLM only) in the tools environment; return its log.

    Raises:
        ExportError: it failed, timed out or wrote no ``llm/model.onnx`` (the log's last lines in the message).
    """
    command = [str(python), "-m", "tensorrt_edgellm.scripts.export", str(source), str(out), "--dtype", dtype,
               "--max-kv-cache-capacity", str(limits["max_kv_cache_capacity"])]
    log.info("running the TensorRT Edge-LLM exporter: %s", " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=tools_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"the TensorRT Edge-LLM exporter ran past {timeout:.0f} s") from exc
    text = done.stdout + done.stderr
    if done.returncode != 0 or not (out / "llm" / "model.onnx").exists():
        tail = "\n".join(text.strip().splitlines()[-6:])
        raise ExportError(f"the TensorRT Edge-LLM exporter failed (exit {done.returncode}): {tail}")
    return text


def export_edgellm(out: Path, settings: Settings | None = None, dtype: str = "float16", limits: dict | None = None,
                   tools: Path | None = None, timeout: float = 1800) -> dict:
    """Export the served LLM (adapter merged when configured or trained) with TensorRT Edge-LLM into ``out``.

    Returns:
        A summary: the folder, dtype, adapter and its source, ONNX size, inputs and outputs, the tools' versions.

    Raises:
        ModelNotAvailable: the tools environment, the model or the adapter is missing.
        ExportError: no chat template, or the exporter failed.
    """
    settings = settings or get_settings()
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}")
    limits = limits or {"max_batch_size": 1, "max_input_len": 1024, "max_kv_cache_capacity": 4096}
    python = tools_python(settings, tools)
    versions = tools_versions(python)
    folder, adapter, adapter_source = llm_folder(settings)
    started = time.perf_counter()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    staging = stage_source(folder, tmp.with_name(tmp.name + ".src"))
    try:
        text = run_exporter(python, staging, tmp, dtype, limits, timeout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (tmp / "export.log").write_text(text)
    (tmp / "build_engine.sh").write_text(build_script(limits))
    (tmp / "build_engine.sh").chmod(0o755)
    signature = onnx_signature(tmp / "llm" / "model.onnx")
    files = file_entries(tmp)
    onnx_mb = round(sum(e["bytes"] for n, e in files.items() if n.startswith("llm/model.onnx")) / 2**20, 1)
    info = {"format": "tensorrt-edgellm onnx", "model": settings.llm_model, "source_folder": str(folder),
            "adapter": adapter, "adapter_source": adapter_source, "dtype": dtype, "limits": limits,
            "tools": versions, "onnx": signature, "onnx_mb": onnx_mb, "files": files,
            "export_s": round(time.perf_counter() - started, 1),
            "needs_device": "Edge-LLM's llm_build (TensorRT on the Jetson) turns llm/ into an engine: bash build_engine.sh"}
    (tmp / "prism_export.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return {"export": str(out), "dtype": dtype, "adapter": adapter, "adapter_source": adapter_source,
            "onnx_mb": onnx_mb, "inputs": [i["name"] for i in signature["inputs"]],
            "outputs": [o["name"] for o in signature["outputs"]], "tools": versions,
            "build": str(out / "build_engine.sh"), "export_s": info["export_s"]}


if __name__ == "__main__":
    main()
