"""Imports point down: the layering rules of DESIGN.md, checked on the code's import statements.

The same rules as ``../shared/checks/layering.py`` (which CI's clean clone may not have), plus the
order of ``ray_app``'s packages: each may import only packages below it (docs/architecture.md).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINGS = {"training", "serving", "edge"}
# ray_app's packages from the bottom up; a package imports only packages of a lower rank.
RANKS = {
    "errors": -1,  # every package may raise Prism's own errors
    "settings": 0, "jobconfig": 0, "reports": 0, "progress": 0, "jsonl": 0, "entrypoints": 0,
    "models": 1, "store": 1, "auth": 1, "telemetry": 1,
    "corpus": 2, "llm": 2, "raystart": 2,
    "vision": 3, "audit": 3, "ingest": 3, "bias": 3,
    "ask": 4,
    "evaluation": 5, "benchmarks": 5,
    "rai": 6,
    "cli": 7,
}


def python_files() -> list[Path]:
    tops = ["ray_app", "loadtests", *sorted(WINGS)]
    return [f for top in tops if (ROOT / top).exists() for f in sorted((ROOT / top).rglob("*.py"))]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def in_cli_layer(rel: Path) -> bool:
    parts = rel.parts
    return rel.as_posix().startswith("ray_app/cli/") or (
        parts[0] in WINGS and (rel.name == "cli.py" or rel.name.endswith("_cli.py") or "cli" in parts[1:-1]))


def problems_in(path: Path, rel: Path | None = None) -> list[str]:
    """Every broken rule in one file; ``rel`` is its place in the project (default: from ``path``)."""
    rel = rel or path.relative_to(ROOT)
    top, found = rel.parts[0], []
    package = rel.parts[1].removesuffix(".py") if top == "ray_app" else None
    for line, module in imports(path):
        head = module.split(".")[0]
        where = f"{rel}:{line} imports {module}"
        if module.startswith("ray_app.cli") and not in_cli_layer(rel):
            found.append(f"{where}: only the CLI layer may")
        if top in WINGS and head in WINGS and head != top:
            found.append(f"{where}: wings never import each other")
        if top == "ray_app" and head in WINGS and not in_cli_layer(rel):
            found.append(f"{where}: the core imports no wing")
        if top == "loadtests" and head in WINGS | {"ray_app"}:
            found.append(f"{where}: load tests speak HTTP only")
        if module.startswith("ray.serve._private"):
            found.append(f"{where}: Ray's private API")
        if package and module.startswith("ray_app.") and package not in ("__init__", "__main__"):
            target = module.split(".")[1]
            if package not in RANKS or target not in RANKS:
                found.append(f"{where}: add {package if package not in RANKS else target} to RANKS in this test")
            elif target != package and RANKS[target] >= RANKS[package]:
                found.append(f"{where}: {package} (rank {RANKS[package]}) may import only lower ranks")
    if top in WINGS | {"ray_app"}:
        for i, text in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"parents\[\d\]", text):
                found.append(f"{rel}:{i} finds files with parents[N]")
    return found


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_point_down(path):
    assert problems_in(path) == []


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: an upward import, a CLI import and a parents[N] lookup are reported."""
    bad = tmp_path / "probe.py"
    bad.write_text("from ray_app.ask.service import AskService\nfrom ray_app.cli.common import emit\n"
                   "REPO = __file__.parents[2]\n")
    found = problems_in(bad, Path("ray_app/store/probe.py"))
    assert any("may import only lower ranks" in p for p in found)
    assert any("only the CLI layer may" in p for p in found)
    assert any("parents[N]" in p for p in found)
