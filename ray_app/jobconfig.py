"""Typed job configs: a pydantic model per job, saved as YAML, with dotted ``key=value`` overrides.

Every job (`training/clip.py`, `training/sft.py`, ...) declares its config as pydantic models
with ``extra="forbid"`` (unknown keys fail) and a description per field, and loads it with
:func:`load_config`, which validates before anything heavy (Ray, torch) starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ray_app.errors import InputError

T = TypeVar("T", bound=BaseModel)


class JobConfigError(InputError):
    """A config file or override is invalid; the message names the key."""


class StrictModel(BaseModel):
    """Base for job config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value (so 3 -> int, true -> bool)."""
    if "=" not in item:
        raise JobConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise JobConfigError(f"override {item!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with dotted overrides applied (missing sections are created)."""
    out = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise JobConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def load_config(model: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML (optional), apply overrides and validate into ``model``.

    Raises:
        JobConfigError: missing file, bad YAML, unknown key or wrong type (one line, names the key).
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise JobConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise JobConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise JobConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise JobConfigError(f"config {where or '<root>'}: {err['msg']} ({len(exc.errors())} error(s))") from exc


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Write a config back to YAML (what a run actually used), next to its checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def split_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """Parse a job's ``main(argv)``: ``--config PATH`` plus ``key=value`` overrides."""
    config, overrides, i = None, [], 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise JobConfigError("--config needs a path")
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config, i = argv[i].split("=", 1)[1], i + 1
        else:
            overrides.append(argv[i])
            i += 1
    return config, overrides


def step_dir_name(step: int) -> str:
    """Checkpoint folder name for a training step: ``step-000200``."""
    return f"step-{step:06d}"


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
