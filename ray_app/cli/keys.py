"""`prism keys`: API keys for the HTTP API (``Authorization: Bearer KEY``).

    prism keys create NAME [--rpm N] [--tokens-per-day N] [--json]   # {"id", "name", "key"}: the key is shown once
    prism keys list [--json]
    prism keys revoke ID_OR_NAME [--json]
"""

from __future__ import annotations

import typer

from ray_app.auth.keys import create_key, list_keys, revoke_key
from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.settings import get_settings
from ray_app.store import get_store

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command("create")
@handle_errors
def create(name: str = typer.Argument(..., help="A name for whoever uses the key."),
           rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute (default PRISM_KEY_DEFAULT_RPM)."),
           tokens_per_day: int | None = typer.Option(
               None, "--tokens-per-day", min=1, help="LLM tokens per UTC day (default PRISM_KEY_DEFAULT_TOKENS_PER_DAY)."),
           json_out: bool = JSON_OPTION) -> None:
    """Create a key and print it once; only its salted hash is stored."""
    settings = get_settings()
    key, secret = create_key(get_store(), name, rpm or settings.key_default_rpm,
                             tokens_per_day or settings.key_default_tokens_per_day)

    def human(obj: dict) -> None:
        console.print(f"key {obj['id']} ({obj['name']}): {obj['rpm']} requests/min, {obj['tokens_per_day']:,} tokens/day")
        console.print("Copy it now, it is not shown again:")
        typer.echo(obj["key"])

    emit({"id": key.id, "name": key.name, "key": secret, "rpm": key.rpm, "tokens_per_day": key.tokens_per_day},
         json_out, human)


@app.command("list")
@handle_errors
def list_(json_out: bool = JSON_OPTION) -> None:
    """Every key with its limits (never the key itself)."""
    keys = [k.public() for k in list_keys(get_store())]

    def human(obj: dict) -> None:
        for k in obj["keys"]:
            state = f"revoked {k['revoked_at'][:19]}" if k["revoked_at"] else "live"
            console.print(f"{k['id']}  {k['name']:<20} {k['rpm']:>8} rpm {k['tokens_per_day']:>12,} tokens/day  {state}")
        if not obj["keys"]:
            console.print("no keys (create one: prism keys create NAME)")

    emit({"keys": keys}, json_out, human)


@app.command("revoke")
@handle_errors
def revoke(id_or_name: str = typer.Argument(..., help="A key id, or a name (revokes every live key with it)."),
           json_out: bool = JSON_OPTION) -> None:
    """Revoke keys: the next request with one gets 403."""
    revoked = [k.public() for k in revoke_key(get_store(), id_or_name)]
    emit({"revoked": revoked}, json_out,
         lambda obj: console.print(f"revoked {', '.join(k['id'] for k in obj['revoked'])}"))
