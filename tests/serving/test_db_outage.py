"""The database stopped and started under the real ingress (issue 19 item 3): every /v1 route, the key check
included, answers 503 + Retry-After (never 401 or 500) while Postgres is down, /healthz stays up, /readyz says
not ready, and the service recovers by itself once Postgres is back. A private embedded server and Ray; the
other deployments are a small stand-in that answers ``ready`` (the routes used here call none of them)."""

import time

import httpx
import pytest

from tests.conftest import reset_settings
from tests.serving.harness import free_port


def _wait_for(check, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_database_down_is_503_everywhere_then_recovers(tmp_path_factory, monkeypatch):
    import ray
    from ray import serve

    from ray_app.auth.keys import create_key
    from ray_app.store import Store
    from ray_app.store.embedded import start_embedded, stop_embedded
    from serving.ingress import Ingress

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class StandIn:
        def ready(self) -> dict:
            return {}

    pg_dir = tmp_path_factory.mktemp("pg-down") / "pg"
    url = start_embedded(pg_dir)
    for name, value in {"DATABASE_URL": url, "PRISM_POOL_TIMEOUT_S": "2", "PRISM_POOL_RECONNECT_TIMEOUT_S": "3",
                        "RAY_memory_monitor_refresh_ms": "0"}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    with Store(url) as store:
        _, key = create_key(store, "outage", rpm=10_000, tokens_per_day=10**9)
    auth = {"Authorization": f"Bearer {key}"}
    stranger = {"Authorization": "Bearer prism_0123456789ab_" + "0" * 64}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=2, include_dashboard=False, namespace="db-outage", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        stand_in = StandIn.bind()
        ingress = Ingress.options(num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0})
        serve.run(ingress.bind(stand_in, stand_in, stand_in, stand_in), name="outage", route_prefix="/")
        assert httpx.get(base + "/v1/models", headers=auth, timeout=60).status_code == 200
        assert httpx.get(base + "/readyz", timeout=60).status_code == 200

        stop_embedded(pg_dir)
        down = {
            "models": httpx.get(base + "/v1/models", headers=auth, timeout=60),
            "unknown key": httpx.get(base + "/v1/models", headers=stranger, timeout=60),
            "search": httpx.post(base + "/v1/search", json={"query": "frogs"}, headers=auth, timeout=60),
            "ask": httpx.post(base + "/v1/ask", json={"question": "Where do frogs live?"}, headers=auth, timeout=60),
        }
        for route, r in down.items():
            assert r.status_code == 503, (route, r.status_code, r.text)
            assert r.json()["error"]["code"] == "database_unavailable" and int(r.headers["retry-after"]) >= 1, route
        ready = httpx.get(base + "/readyz", timeout=60)
        assert ready.status_code == 503 and not ready.json()["checks"]["database"]["ok"] and ready.headers["retry-after"]
        assert httpx.get(base + "/healthz", timeout=30).status_code == 200  # liveness: the replica is fine

        start_embedded(pg_dir)
        back = _wait_for(lambda: httpx.get(base + "/v1/models", headers=auth, timeout=60).status_code == 200, 60)
        assert back, "the service did not recover by itself within 60 s"
        assert httpx.get(base + "/readyz", timeout=60).status_code == 200
        assert httpx.get(base + "/v1/models", headers=stranger, timeout=60).status_code == 401  # a key check again
    finally:
        serve.shutdown()
        ray.shutdown()
        stop_embedded(pg_dir)
        reset_settings()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
