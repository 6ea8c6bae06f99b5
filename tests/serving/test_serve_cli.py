"""`prism serve up --detach` returns once healthy and prints the URL; `status` and `down` work (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.harness import free_port


@pytest.mark.slow
def test_up_detach_status_down(database_url, tmp_path):
    port = free_port()
    env = dict(os.environ, PRISM_HOME=str(tmp_path / "home"))
    prism = [str(Path(sys.executable).with_name("prism"))]
    # the converted LLM lives under the test PRISM_HOME; point the new home's models at it
    (tmp_path / "home").mkdir()
    os.symlink(os.path.abspath(os.environ["PRISM_HOME"]) + "/models", tmp_path / "home" / "models")
    up = subprocess.run([*prism, "serve", "up", "--detach", "--port", str(port), "--num-cpus", "2", "--json"],
                        env=env, capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        info = json.loads(up.stdout)
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert httpx.get(info["url"] + "/healthz").json()["status"] == "ok"
        status = json.loads(subprocess.run([*prism, "serve", "status", "--json"], env=env, capture_output=True,
                                           text=True, timeout=60).stdout)
        assert status["running"] and status["healthy"]
    finally:
        down = subprocess.run([*prism, "serve", "down", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(down.stdout)["stopped"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
