"""`prism audit`: verify the tamper-evident audit chain, or show its newest records.

    prism audit verify [--json]     exit 1 and name the first broken record when the chain is broken
    prism audit show [--last N] [--json]
"""

from __future__ import annotations

import typer

from ray_app.audit.chain import last_records, verify_chain
from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.store import get_store

app = typer.Typer(help="Inspect and verify the tamper-evident audit log.", no_args_is_help=True)


@app.command("verify")
@handle_errors
def verify(json_out: bool = JSON_OPTION) -> None:
    """Walk the chain and recompute every hash; exit status 1 at the first broken record."""
    result = verify_chain(get_store())

    def human(r: dict) -> None:
        if r["ok"]:
            console.print(f"[green]audit chain ok[/green]: {r['records']} records, head {r['head'][:16]}")
        else:
            b = r["first_broken"]
            console.print(f"[red]audit chain broken[/red] at record seq={b['seq']} audit_id={b['audit_id']}: {b['reason']}")

    emit(result, json_out, human)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("show")
@handle_errors
def show(last: int = typer.Option(10, "--last", min=1, max=1000, help="How many records."),
         json_out: bool = JSON_OPTION) -> None:
    """Print the newest records, newest first."""
    rows = last_records(get_store(), last)

    def human(obj: dict) -> None:
        for r in obj["records"]:
            rec = r["record"]
            console.print(f"{r['seq']:>6} {r['audit_id']} grounded={rec.get('grounded')} flags={rec.get('flags')}")

    emit({"records": rows}, json_out, human)
