"""`prism rai report`: the Responsible-AI report (docs/rai/report.{json,md}); `prism rai anchors`: its anchor
explanations alone.

Each command is its job's ``main(argv)`` (:mod:`ray_app.rai.report`, :mod:`ray_app.rai.anchors`): the job owns
its options and ``--help``, and ``python -m ray_app.rai.report`` takes the same ones.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command

app = typer.Typer(help="Responsible AI: the bias audit, fairness metrics, model cards and mitigation plan.",
                  no_args_is_help=True)

job_command(app, "report", "ray_app.rai.report",
            "Measure the bias audit (annotation error, exposure, counterfactual answers, the mitigation) and write "
            "docs/rai/report.{json,md} with model cards, data sheets, explanations and injection results.")
job_command(app, "anchors", "ray_app.rai.anchors",
            "Anchor explanations (alibi AnchorText, run in .prism-alibi) of the learned injection detector's "
            "decisions on a sample of the injection suite.")
