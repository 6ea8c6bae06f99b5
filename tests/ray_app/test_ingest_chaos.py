"""Ingest chaos (issue 19 item 7, slow): one ingest SIGKILLed 20 times at random points (the driver and every
process below it), resumed each time, then run to the end: no missing and no duplicate chunks, and the counts of
a clean run. Each kill lands a random 1-12 s after a start, or once the documents pass a random count."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

from ray_app.corpus import wiki
from ray_app.corpus.schema import write_shards
from tests.ray_app.test_ingest import (
    REPO,
    expected_chunks,
    integrity,
    kill_tree,
    wait_for_open_transactions_to_end,
)

KILLS = 20


@pytest.mark.slow
def test_twenty_sigkills_during_one_ingest_lose_and_duplicate_nothing(tmp_path, store, database_url):
    records = list(wiki.build_records(limit=200))
    write_shards(records, tmp_path / "shards", "wiki", shard_rows=25)
    env = {**os.environ, "DATABASE_URL": database_url, "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "ray_app.ingest", str(tmp_path / "shards"), "--json", "--batch-docs", "4",
           "--embed-batch-docs", "4", "--num-cpus", "2"]
    rng = random.Random()
    seen = []
    for _ in range(KILLS):
        before = store.counts()["documents"]
        threshold = before + rng.randint(1, 12)
        after_s = rng.uniform(1.0, 12.0)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        started = time.monotonic()
        try:
            while (proc.poll() is None and time.monotonic() - started < after_s
                   and store.counts()["documents"] < threshold):
                time.sleep(0.05)
        finally:
            kill_tree(proc)
        wait_for_open_transactions_to_end(store)
        check = integrity(store)
        assert check["duplicates"] == 0 and check["orphans"] == 0, check
        seen.append(store.counts()["documents"])
    assert seen == sorted(seen)  # a kill never takes back what an earlier run committed

    final = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(final.stdout)
    assert summary["documents"] == len(records)
    assert store.counts() == {"documents": len(records), "chunks": expected_chunks(records), "images": 0}
    assert integrity(store) == {"duplicates": 0, "orphans": 0, "incomplete": 0}
