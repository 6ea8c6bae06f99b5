"""The store across a database restart (issue 19): the pool checks connections, a read whose connection broke is
retried once, a database that is down is a StoreError within the pool timeout (never a hang), and the store
recovers by itself when the database is back. A private embedded server, so stopping it disturbs no other test."""

import time

import psycopg
import pytest

from ray_app.store import Store, StoreError
from ray_app.store.embedded import start_embedded, stop_embedded


@pytest.fixture()
def private_pg(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("pg-outage") / "pg"
    url = start_embedded(folder)
    monkeypatch.setenv("PRISM_POOL_TIMEOUT_S", "2")
    monkeypatch.setenv("PRISM_POOL_RECONNECT_TIMEOUT_S", "3")
    from tests.conftest import reset_settings

    reset_settings()
    yield folder, url
    stop_embedded(folder)
    reset_settings()


def _wait_until(check, timeout_s: float) -> float:
    start = time.monotonic()
    while True:
        try:
            check()
            return time.monotonic() - start
        except StoreError:
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.2)


def test_a_broken_connection_is_retried_and_a_down_database_is_a_store_error(private_pg):
    folder, url = private_pg
    with Store(url) as store:
        assert store.counts() == {"documents": 0, "chunks": 0, "images": 0}
        # Every server connection dropped (what a restart does to a pool): the next reads still work.
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()[0]
        assert killed >= 1
        assert store.counts()["documents"] == 0 and store.get_document("nope") is None

        stop_embedded(folder)
        start = time.monotonic()
        with pytest.raises(StoreError, match="cannot be reached"):
            store.counts()
        with pytest.raises(StoreError):
            store.ping()
        assert time.monotonic() - start < 15  # bounded by the pool timeout (2 s), not a hang
        assert store.usable()  # the pool stays open: nothing to restart

        assert start_embedded(folder) == url
        recovered_s = _wait_until(store.ping, 30)
        assert store.counts()["documents"] == 0
        assert recovered_s < 30
