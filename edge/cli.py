"""`prism export edge|trtllm|edgellm`: each job module owns its options (``python -m edge.<module>`` takes the same)."""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command

app = typer.Typer(help="Export Prism for other runtimes.", no_args_is_help=True)

job_command(app, "edge", "edge.export",
            "A self-contained edge bundle: ONNX Runtime GenAI LLM (int4/int8/fp32), INT8 MiniLM, image tower, index.")
job_command(app, "trtllm", "edge.trtllm",
            "The LLM (adapter merged) as a TensorRT-LLM checkpoint (config.json + rank0.safetensors) + build_trtllm.sh.")
job_command(app, "trtllm-sensitivity", "edge.trtllm_sensitivity",
            "Which linears W8A16 hurts most in the served LLM; the set export trtllm keeps in fp16 by default.")
job_command(app, "edgellm", "edge.edgellm",
            "The LLM (adapter merged) as a TensorRT Edge-LLM ONNX export for Jetson, + build_engine.sh (needs make edge-tools).")
