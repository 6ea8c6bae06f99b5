"""`prism eval ...`: evaluations that write docs/reports/*.{json,md}."""

import typer

from ray_app.cli.common import mount

app = typer.Typer(help="Evaluate retrieval, the image encoder and answers; write docs/reports.", no_args_is_help=True)
mount(
    app,
    {
        "retrieval": ("ray_app.evaluation.retrieval", "Retrieval R@1/R@10/MRR/nDCG@10 on wiki descriptions."),
        "image-encoder": ("ray_app.evaluation.image_encoder", "Held-out caption<->image recall and zero-shot accuracy."),
        "answers": ("ray_app.evaluation.answers", "Citation validity, grounding, ROUGE-L, injection-follow rate."),
    },
)
