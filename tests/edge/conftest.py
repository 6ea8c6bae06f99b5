"""Fixtures of the edge tests: a small store (a fresh database on the session's embedded Postgres) and a bundle
exported from it once per module with the real SmolLM2 (int4, built once under the test PRISM_HOME) and MiniLM."""

import uuid

import psycopg
import pytest

from ray_app.store import ChunkRow, DocumentRow, ImageRow, content_hash

DOCS = {
    "Frog": "Frogs are amphibians. Frogs live in ponds, marshes and rainforests on every continent but Antarctica.",
    "Moon": "The Moon is Earth's only natural satellite. It orbits the Earth every 27 days.",
    "Rocket": "A rocket is a vehicle that uses jet propulsion to reach space. Rockets carry astronauts to orbit.",
    "Coffee": "Coffee is a drink brewed from roasted coffee beans, the seeds of berries from Coffea plants.",
    "Penguin": "Penguins are flightless seabirds that live almost exclusively in the Southern Hemisphere.",
    "Volcano": "A volcano is a rupture in the crust of a planet through which lava, ash and gases escape.",
}


def write_docs(store, embedder) -> None:
    docs, chunks = [], []
    for title, text in DOCS.items():
        doc_id = title.lower()
        docs.append(DocumentRow(doc_id, "test", title, content_hash(text), 1, license="CC BY-SA 4.0"))
        chunks.append(ChunkRow(doc_id, 0, f"{title}: {text}", embedder.embed([f"{title}: {text}"])[0]))
    store.write(docs, chunks, [ImageRow("img-frog", "frog", "a green frog", "/nowhere/frog.png", None, "ab" * 32, 8, 8)])


@pytest.fixture(scope="module")
def edge_store(pg_server_url, text_embedder):
    from ray_app.store import Store

    name = f"t_edge_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with Store(pg_server_url.replace("/postgres?", f"/{name}?")) as store:
        write_docs(store, text_embedder)
        yield store
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, edge_store):
    """An int4 bundle of the small store; text-only (the encoder setting points at a folder with no checkpoint)."""
    from edge.export import export_bundle
    from ray_app.settings import get_settings

    out = tmp_path_factory.mktemp("edge") / "bundle-int4"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PRISM_IMAGE_ENCODER", str(out.parent / "no-encoder"))
        get_settings.cache_clear()
        try:
            export_bundle(out, "int4", store=edge_store, prompt_budget=256, max_new_tokens=24)
        finally:
            env.undo()
            get_settings.cache_clear()
    return out
