"""`prism export edge`: the edge bundle (:mod:`edge.export` owns its options; ``python -m edge.export`` takes the same).

``prism export trtllm|edgellm`` join this group when their exporters exist.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command

app = typer.Typer(help="Export Prism for other runtimes.", no_args_is_help=True)

job_command(app, "edge", "edge.export",
            "A self-contained edge bundle: ONNX Runtime GenAI LLM (int4/int8/fp32), INT8 MiniLM, image tower, index.")
