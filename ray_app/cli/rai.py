"""`prism rai report`: the Responsible-AI report (docs/rai/report.{json,md}).

The command is the job's ``main(argv)`` (:mod:`ray_app.rai.report`): the job owns its options and ``--help``,
and ``python -m ray_app.rai.report`` takes the same ones.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command

app = typer.Typer(help="Responsible AI: the bias audit, fairness metrics, model cards and mitigation plan.",
                  no_args_is_help=True)

job_command(app, "report", "ray_app.rai.report",
            "Measure the bias audit (annotation error, exposure, counterfactual answers, the mitigation) and write "
            "docs/rai/report.{json,md} with model cards, data sheets, explanations and injection results.")
