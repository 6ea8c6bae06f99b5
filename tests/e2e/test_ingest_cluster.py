"""The ingest job on a 2-node Ray cluster on 127.0.0.1, submitted with `ray job submit`.

Both nodes are started with ``ray start --block`` in their own process groups, so the test stops
exactly the processes it started (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray_app.corpus import wiki
from ray_app.corpus.schema import write_shards
from tests.serving.harness import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Each node's dashboard agent gets a free HTTP port: the default (52365) is taken by any other Ray
    # on the machine, and a head whose agent cannot bind accepts no `ray job submit`.
    args = [*args, f"--dashboard-agent-listen-port={free_port()}"]
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env, cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left in the group
    except ProcessLookupError:
        pass


def wait_for_nodes(address: str, n: int, env: dict, timeout: float = 240) -> None:
    script = f"import ray; ray.init(address='{address}'); print(len([x for x in ray.nodes() if x['Alive']]))"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(3)
    raise TimeoutError(f"the cluster at {address} did not reach {n} nodes")


def test_ingest_job_on_a_two_node_cluster(tmp_path, store, database_url, ray_token_env):
    records = list(wiki.build_records(limit=60))
    write_shards(records, tmp_path / "shards", "wiki", shard_rows=20)
    port, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"DATABASE_URL": database_url, **ray_token_env}
    head = start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--dashboard-port={dash}",
                       "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=1",
                       f"--temp-dir=/tmp/rt{port}"], env, tmp_path / "head.log")
    worker, job_id = None, f"prism-ingest-test-{port}"
    try:
        wait_for_nodes(f"127.0.0.1:{port}", 1, env)
        worker = start_node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1"],
                            env, tmp_path / "worker.log")
        wait_for_nodes(f"127.0.0.1:{port}", 2, env)
        # The working dir is uploaded; local state and build folders stay behind (Ray reads .gitignore,
        # not .git/info/exclude).
        runtime_env = {"env_vars": {"DATABASE_URL": database_url, "PRISM_HOME": os.environ["PRISM_HOME"]},
                       "excludes": [".prism*", ".venv", ".gpu", ".whl", ".git"]}
        job = subprocess.run(
            [RAY, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", ".",
             "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env), "--",
             sys.executable, "-m", "ray_app.ingest", str(tmp_path / "shards"), "--json", "--embed-actors", "2",
             "--threads", "1", "--batch-docs", "8", "--embed-batch-docs", "8"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        summary = json.loads(next(line for line in job.stdout.splitlines() if line.startswith('{"documents"')))
        assert summary["documents"] == summary["written"] == len(records)
        counts = store.counts()
        assert counts["documents"] == len(records) and counts["chunks"] == summary["chunks"] >= len(records)
    finally:
        # A job that outlives the test (it failed or timed out) would keep its driver process.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([RAY, "job", "stop", f"--address=http://127.0.0.1:{dash}", job_id], env=env,
                           capture_output=True, timeout=60)
        for proc in (worker, head):
            if proc is not None:
                stop_node(proc)
