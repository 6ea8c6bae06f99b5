"""Shared fixtures: one real embedded PostgreSQL + pgvector per test session (stopped at its end
unless it was already running), a fresh database per test that asks for one, and a PRISM_HOME whose
model caches (ONNX export, converted SmolLM2) persist across runs in ``.prism-test/`` so only the
first run pays for conversion.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("PRISM_TEST_HOME", REPO / ".prism-test"))
os.environ["PRISM_HOME"] = str(TEST_HOME)
os.environ.pop("DATABASE_URL", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def reset_settings() -> None:
    """Forget cached settings and per-process singletons after changing the environment."""
    from ray_app.models import image_default, text
    from ray_app.settings import get_settings
    from ray_app.store import close_store

    get_settings.cache_clear()
    text._cache.clear()
    image_default._encoder = None
    close_store()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the session's embedded server: started once, and stopped at the end if this session started it."""
    from ray_app.store.embedded import embedded_url, start_embedded, stop_embedded

    was_running = embedded_url(TEST_HOME / "pg") is not None
    yield start_embedded(TEST_HOME / "pg")
    if not was_running:
        stop_embedded(TEST_HOME / "pg")


@pytest.fixture()
def database_url(pg_server_url: str, monkeypatch) -> str:
    """A new, empty database on the session server, exported as DATABASE_URL for this test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server_url.replace("/postgres?", f"/{name}?")
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings()
    yield url
    reset_settings()
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def store(database_url: str):
    from ray_app.store import Store

    with Store(database_url) as s:
        yield s


@pytest.fixture()
def ray_token_env() -> dict[str, str]:
    """Environment for a `ray start` cluster with token auth and its own token.

    `ray start` never creates ~/.ray/auth_token (only `ray.init` of a new local cluster does), so a
    cluster test must not depend on what an earlier run left there.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="session")
def text_embedder():
    from ray_app.models.text import TextEmbedder

    return TextEmbedder(backend="onnx")


def pytest_collection_modifyitems(config, items):
    """Run the tests that share the session's Serve app last.

    That app's Ray cluster lives until the session ends and holds the CPUs its replicas reserved;
    a Ray Data or Ray Train job started in-process after it would join that cluster and wait
    for resources forever. Every other Ray test starts and stops its own cluster.
    """
    items.sort(key=lambda item: "prism_app" in getattr(item, "fixturenames", ()))
