"""`prism demo` end to end on a fresh PRISM_HOME: everything comes up, and a second run reuses it all.

Slow (trains the demo image encoder and the demo LoRA adapter, and ingests the full demo corpus): run with `make test-slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def prism(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "ray_app.cli", *args], env=env, capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_demo_brings_everything_up_and_second_run_reuses_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"PRISM_HOME": str(tmp_path / "home")}
    try:
        first = prism("demo", "--json", env=env)
        assert first["steps"]["image_encoder"] == "trained"
        assert first["database"]["documents"] > 10_000 and first["database"]["images"] > 500
        answer_model = first["steps"]["answer_model"]
        assert answer_model["action"] == "trained" and answer_model["adapter"].endswith("smollm2-demo/final")
        with urllib.request.urlopen(first["serve"]["url"] + "/healthz", timeout=30) as resp:
            assert resp.status == 200
            versions = json.loads(resp.read())["versions"]
        assert versions["adapter"].startswith("smollm2-demo/final@")  # the tuned model is served
        assert versions["image_encoder"].startswith("clip-demo/final@")
        assert first["serve"]["versions"] == versions
        key = first["api_key"]["key"]  # printed with the URL; the demo key works on the API
        models = urllib.request.Request(first["serve"]["url"] + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(models, timeout=30) as resp:
            assert resp.status == 200
        second = prism("demo", "--json", env=env)
        reused = second["steps"].pop("answer_model")
        assert reused["action"] == "reused" and reused["adapter"] == answer_model["adapter"]
        assert second["steps"] == {"corpus_built": {}, "image_encoder": "reused", "ingest": "unchanged"}
        assert second["serve"]["started"] is False
        assert second["database"] == first["database"]
        assert second["api_key"]["key"] != key  # a new demo key; the first one is revoked
    finally:
        subprocess.run([sys.executable, "-m", "ray_app.cli", "serve", "down"], env=env, timeout=300)
        subprocess.run([sys.executable, "-m", "ray_app.cli", "db", "down"], env=env, timeout=120)
