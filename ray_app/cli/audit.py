"""`prism audit`: verify the tamper-evident audit chain, or show its records.

    prism audit verify [--json]     exit 1 and name the first bad record when the chain is broken
    prism audit show [ID] [--last N] [--json]   the question and answer decrypted (an operator's view)
    prism audit rotate-key [--json] a new AES-GCM key seals new records; old keys still open old ones
"""

from __future__ import annotations

import os

import typer

from ray_app.audit.chain import ask_records, last_records, verify_chain
from ray_app.audit.sealing import ENV_KEYS, add_key, load_keys
from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.errors import InputError
from ray_app.settings import get_settings
from ray_app.store import get_store

app = typer.Typer(help="Inspect and verify the tamper-evident audit log.", no_args_is_help=True)


@app.command("verify")
@handle_errors
def verify(json_out: bool = JSON_OPTION) -> None:
    """Recompute every HMAC and hold the chain against its head checkpoint; exit status 1 at the first bad record."""
    result = verify_chain(get_store())

    def human(r: dict) -> None:
        if r["ok"]:
            console.print(f"[green]audit chain ok[/green]: {r['records']} records, head {r['head'][:16]}, "
                          f"checkpoint at seq {r['checkpoint']['seq']} ({r['checkpoint']['path']})")
            if r["unanchored"]:
                console.print(f"{r['unanchored']} records are newer than the checkpoint's last line")
        else:
            b = r["first_broken"]
            console.print(f"[red]audit chain broken[/red] at record seq={b['seq']} audit_id={b['audit_id']}: {b['reason']}")

    emit(result, json_out, human)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("show")
@handle_errors
def show(audit_id: str | None = typer.Argument(None, help="An ask id (its started and completed records)."),
         last: int = typer.Option(10, "--last", min=1, max=1000, help="How many records (without ID)."),
         json_out: bool = JSON_OPTION) -> None:
    """Print one ask's records (oldest first), or the newest records (newest first), with the question and answer
    decrypted with the audit text keys."""
    rows = ask_records(get_store(), audit_id) if audit_id else last_records(get_store(), last)

    def human(obj: dict) -> None:
        for r in obj["records"]:
            rec = r["record"]
            console.print(f"{r['seq']:>6} {r['created_at']} {r['audit_id']} {rec.get('event', 'completed')}"
                          f" status={rec.get('status', 'answered')} grounded={rec.get('grounded')} flags={rec.get('flags')}",
                          markup=False)
            for name, text in (r.get("texts") or {}).items():
                console.print(f"       {name}: {text}", markup=False, highlight=False)

    emit({"records": rows}, json_out, human)
    if audit_id and not rows:
        raise typer.Exit(1)


@app.command("rotate-key")
@handle_errors
def rotate_key(json_out: bool = JSON_OPTION) -> None:
    """Add a new AES-GCM key to the audit text key file: new records are sealed with it, older ones still open with
    the keys before it (remove an old key only when its records may become unreadable)."""
    if os.environ.get(ENV_KEYS, "").strip():
        raise InputError(f"{ENV_KEYS} is set: rotate by adding a key to it (kid:hex, last), not to the file")
    path = get_settings().audit_text_key_path()
    kid = add_key(path)
    keys = load_keys(path)
    result = {"key_id": kid, "path": str(path), "keys": len(keys.keys)}
    emit(result, json_out, lambda r: console.print(f"new audit text key {r['key_id']} in {r['path']} "
                                                   f"({r['keys']} keys; new records use it)"))
