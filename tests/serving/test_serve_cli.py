"""`prism serve up --detach` returns once healthy and prints the URL; `status` and `down` work (slow)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.harness import free_port, wait_healthy


@pytest.mark.slow
def test_up_detach_status_down(database_url, tmp_path):
    port = free_port()
    env = dict(os.environ, PRISM_HOME=str(tmp_path / "home"))
    prism = [str(Path(sys.executable).with_name("prism"))]
    # the converted LLM lives under the test PRISM_HOME; point the new home's models at it
    (tmp_path / "home").mkdir()
    os.symlink(os.path.abspath(os.environ["PRISM_HOME"]) + "/models", tmp_path / "home" / "models")
    # a trained adapter in the new home and none configured: `up` serves it and says so, /healthz shows it
    from tests.ray_app.test_model_choice import save_smollm2_adapter

    env.pop("PRISM_LLM_ADAPTER", None)
    adapter = save_smollm2_adapter(tmp_path / "home" / "checkpoints" / "smollm2-served" / "final", seed=4)
    up = subprocess.run([*prism, "serve", "up", "--detach", "--port", str(port), "--num-cpus", "2", "--json"],
                        env=env, capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        info = json.loads(up.stdout)
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert info["adapter"] == str(adapter.resolve()) and info["adapter_source"].startswith("newest under")
        assert f"LLM adapter: {info['adapter']} (newest under" in up.stderr
        health = httpx.get(info["url"] + "/healthz").json()
        assert health["status"] == "ok" and health["versions"]["adapter"].startswith("smollm2-served/final@")
        status = json.loads(subprocess.run([*prism, "serve", "status", "--json"], env=env, capture_output=True,
                                           text=True, timeout=60).stdout)
        assert status["running"] and status["healthy"]
    finally:
        down = subprocess.run([*prism, "serve", "down", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(down.stdout)["stopped"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.slow
def test_serve_deploy_onto_a_running_cluster(database_url, tmp_path, ray_token_env):
    """`serve deploy serving/config.yaml` (Ray's own CLI) onto a `ray start --head` cluster serves the API."""
    import yaml

    from serving.app import CONFIG_PATH

    bin_dir = Path(sys.executable).parent
    http_port, gcs_port, dashboard_port, agent_port = free_port(), free_port(), free_port(), free_port()
    config = yaml.safe_load(CONFIG_PATH.read_text())
    config["http_options"]["port"] = http_port
    deploy_file = tmp_path / "config.yaml"
    deploy_file.write_text(yaml.safe_dump(config))
    # Replicas inherit the raylet's environment: the database and the models of this test session.
    # Token auth (Ray's default for new clusters); the same variables make the `serve deploy` client send it.
    # Serve's proxy gets Prism's body limit as docs/security.md says to set it on a cluster Prism did not start.
    env = dict(os.environ, DATABASE_URL=database_url, RAY_ADDRESS="", PYTHONPATH=str(Path.cwd()), **ray_token_env,
               RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="serving.http_limits:proxy_middlewares")
    ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    # --block keeps `ray start` in the foreground; its own process group holds the whole cluster, so the
    # test stops exactly this cluster (`ray stop` would stop every Ray on the machine).
    ray_start = [str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(gcs_port), "--num-cpus", "2",
                 "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                 "--node-ip-address", "127.0.0.1", "--temp-dir", ray_temp,
                 "--dashboard-agent-listen-port", str(agent_port)]  # the default is taken by any other Ray here
    cluster = subprocess.Popen(ray_start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url, dashboard = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(dashboard, 300)
        # the owner migrates first: replicas connect as the serving role and never change the schema
        migrated = subprocess.run([str(bin_dir / "prism"), "db", "migrate", "--json"], env=env, capture_output=True,
                                  text=True, timeout=120)
        assert migrated.returncode == 0 and json.loads(migrated.stdout)["applied"], migrated.stderr[-2000:]
        deploy = subprocess.run([str(bin_dir / "serve"), "deploy", str(deploy_file), "-a", dashboard],
                                env=env, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        wait_healthy(url)
        assert httpx.get(url + "/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.post(url + "/v1/search", json={"query": "frogs", "k": 3}, timeout=120).status_code == 401
        created = subprocess.run([str(bin_dir / "prism"), "keys", "create", "serve-test", "--json"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stderr[-2000:]
        auth = {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}
        search = httpx.post(url + "/v1/search", json={"query": "frogs", "k": 3}, timeout=120, headers=auth)
        assert search.status_code == 200 and "results" in search.json()
        bad = httpx.post(url + "/v1/search", json={"query": "frogs", "k": 0}, timeout=60, headers=auth)
        assert bad.status_code == 422 and "error" in bad.json()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cluster.pid, signal.SIGTERM)
            try:
                cluster.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(cluster.pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)


def _wait_for_dashboard(url: str, timeout_s: float) -> None:
    """Until the dashboard answers at all (with token auth on, its first answer is a 401)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/api/version", timeout=5)
            return
        time.sleep(3)
    raise AssertionError(f"the dashboard at {url} did not answer within {timeout_s:.0f} s")
