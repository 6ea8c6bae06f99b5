"""`prism eval retrieval|image-encoder|answers|injection|grounding|edge`: the evaluation jobs, which write docs/reports/*.{json,md}.

Each command is its job's ``main(argv)`` (:mod:`ray_app.evaluation`): the job owns its options and
``--help``, and ``python -m ray_app.evaluation.<job>`` takes the same ones.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command

app = typer.Typer(help="Evaluate retrieval, the image encoder, answers and injection defences; write docs/reports.", no_args_is_help=True)

job_command(app, "retrieval", "ray_app.evaluation.retrieval",
            "Retrieval R@1/R@10/MRR/nDCG@10 for vector, text and hybrid search on the ingested wiki corpus.")
job_command(app, "image-encoder", "ray_app.evaluation.image_encoder",
            "Held-out caption<->image recall and zero-shot accuracy, untrained baseline vs trained.")
job_command(app, "answers", "ray_app.evaluation.answers",
            "Evaluate the fine-tuned answer models (citations, grounding, ROUGE-L, injection); write the report.")
job_command(app, "injection", "ray_app.evaluation.injection",
            "Prompt-injection suite: attack success and false refusals per model x defences; trains the detector.")
job_command(app, "grounding", "ray_app.evaluation.grounding",
            "Precision/recall of the audit's grounded: true against hand-labelled answers (datasets/grounding).")
job_command(app, "edge", "edge.quality",
            "The edge runtime against the server: answer metrics on the held-out questions, image-label agreement.")
