"""The `prism` command line. The app itself is assembled in :mod:`ray_app.cli.root`.

Importing a command module (or :mod:`ray_app.cli.common`) does not assemble the app, so a module
that is imported before the CLI still gets mounted whole; ``ray_app.cli.app`` and
``ray_app.cli.main`` load it on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"app", "main"}:
        import importlib

        return getattr(importlib.import_module("ray_app.cli.root"), name)
    raise AttributeError(f"module 'ray_app.cli' has no attribute {name!r}")
