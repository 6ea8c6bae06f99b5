"""Ingest benchmark: the Ray Data pipeline against bare baselines measured in the same run.

    prism bench ingest --docs 1000000 --json     # writes docs/reports/ingest-1m.{json,md}
    python -m ray_app.benchmarks.ingest --docs 1000000 --json

One run: build N synthetic documents (plus 1,000 held-out ones for queries), ingest them into a
fresh database with the pipeline, then on the same machine and texts: a bare single-process
embedding loop (same backend and threads) and a bare binary COPY of the same chunk rows into a
plain table. Ratios are pipeline / bare. Then HNSW build seconds, recall@10 of HNSW search against
exact search for the held-out queries, and single-query p50/p95 search latency.

A 1M-document run takes hours on 2 cores, so ``--resume`` makes it survivable: the corpus and the
database are kept in ``--workdir`` and reused, a killed run picks up where the store stands (the
ingest skips complete documents), and a heartbeat in ``<workdir>/progress.jsonl`` records, every
30 s, how many documents the store holds. The pipeline rates of a resumed run are computed over the
summed active seconds of all its segments (from each segment's start to its last heartbeat or end).
``--progress`` prints where such a run stands (documents stored, recent rate, ETA) from the heartbeats.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.benchmarks.embed import bare_embed, bf16_speedup, int8_speedup
from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import NotFound
from ray_app.jsonl import append_jsonl, read_jsonl
from ray_app.reports import load_average, write_report
from ray_app.settings import EMBED_BACKENDS

PROG = "python -m ray_app.benchmarks.ingest"
HELD_OUT = 1000
INT8_SAMPLE = 2000  # texts for the fp32-vs-INT8 (or bf16) comparison of an onnx-int8 (torch-bf16) run
TARGETS = {"embed_ratio": 0.8, "copy_ratio": 0.8, "recall_at_10": 0.95, "search_p95_ms": 50.0}


@dataclass
class IngestBenchConfig:
    """What `prism bench ingest` runs and where it writes.

    Attributes:
        docs: synthetic documents to ingest.
        seed: synthetic corpus seed.
        threads: embedding threads, pipeline and bare loop (None: all CPUs).
        backend: embedding backend for the pipeline, the bare loop and the queries (None: settings).
        bare_sample: texts / rows for the bare baselines.
        queries: held-out queries for recall and latency.
        workdir: where the corpus shards go (None: a temporary folder; with ``resume``:
            ``$PRISM_HOME/bench/ingest-<N>``).
        resume: keep and reuse the corpus and database of an earlier, killed run in ``workdir``.
        out: folder for ``ingest-<N>.{json,md}``.
        write: write the report files.
    """

    docs: int = 10_000
    seed: int = 0
    threads: int | None = None
    backend: str | None = None
    bare_sample: int = 20_000
    queries: int = HELD_OUT
    workdir: Path | None = None
    resume: bool = False
    out: Path = Path("docs/reports")
    write: bool = True

    def run_dir(self) -> Path | None:
        """``workdir``, or for a resumable run its default under ``$PRISM_HOME/bench``."""
        if self.workdir is None and self.resume:
            from ray_app.settings import get_settings

            return get_settings().home / "bench" / report_name(self.docs)
        return self.workdir


def report_name(docs: int) -> str:
    """``ingest-1m`` for 1,000,000 documents, ``ingest-20k`` for 20,000, else ``ingest-<N>``."""
    if docs % 1_000_000 == 0:
        return f"ingest-{docs // 1_000_000}m"
    if docs % 1000 == 0:
        return f"ingest-{docs // 1000}k"
    return f"ingest-{docs}"


def fresh_database(base_url: str, name: str, keep: bool = False) -> str:
    """Drop and create database ``name`` on the server of ``base_url`` (``keep``: reuse it if it exists)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not (keep and exists):
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))


def synthetic_corpus(workdir: Path, docs: int, seed: int, resume: bool) -> dict:
    """Build the synthetic shards, or with ``resume`` reuse the ones a previous run left complete."""
    from ray_app.corpus.build import build_corpus

    marker = workdir / "corpus.json"
    if resume and marker.exists():
        build = json.loads(marker.read_text())
        if build.get("documents") == docs and build.get("seed") == seed:
            return {**build, "seconds": 0.0, "reused": True}
    build = build_corpus("synthetic", workdir / "corpus", docs=docs, seed=seed)
    marker.write_text(json.dumps({**build, "out": str(build["out"]), "seed": seed}))
    return build


class _Periodic:
    """Calls ``tick`` every ``every`` seconds on a daemon thread, between ``start`` and ``stop``."""

    def __init__(self, every: float):
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Heartbeat(_Periodic):
    """Appends ``{"segment", "t", "documents"}`` to ``progress.jsonl`` every ``every`` seconds.

    A killed run leaves its last heartbeat behind, so the next run can count the seconds it worked.
    The last entry is ``end`` when the run finished, ``stopped`` when it raised (SIGTERM, Ctrl-C), and
    a plain beat after a SIGKILL.
    """

    def __init__(self, path: Path, url: str, every: float = 30.0):
        super().__init__(every)
        self.path, self.url = path, url
        self.segment = uuid.uuid4().hex[:8]

    def beat(self, event: str = "beat") -> None:
        import psycopg

        with psycopg.connect(self.url) as conn:
            documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        entry = {"segment": self.segment, "event": event, "t": time.time(), "documents": documents,
                 "load_average": round(os.getloadavg()[0], 2)}
        append_jsonl(entry, self.path)

    def tick(self) -> None:
        try:
            self.beat()
        except Exception:  # a missed beat only shortens the counted time
            pass

    def __enter__(self) -> Heartbeat:
        self.beat("start")
        self.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop()
        self.beat("end" if exc_type is None else "stopped")


CPU_GROUPS = ("embed actor", "prepare actor", "other Ray workers", "Ray system", "PostgreSQL", "driver", "other")


def cpu_group(cmdline: str, name: str, pid: int, driver_pid: int) -> str:
    """Which part of the pipeline a process is, from its command line (Ray workers set their title)."""
    if pid == driver_pid:
        return "driver"
    if "MapBatches(EmbedText)" in cmdline:
        return "embed actor"
    if "MapBatches(PrepareDocuments)" in cmdline:
        return "prepare actor"
    if cmdline.startswith("ray::"):  # read and write tasks, idle workers, Ray Data's stats actors
        return "other Ray workers"
    if name.startswith("postgres"):
        return "PostgreSQL"
    if "/ray/" in cmdline or name in ("raylet", "gcs_server"):
        return "Ray system"
    return "other"


def _busy_seconds(times) -> float:
    """Non-idle CPU seconds since boot (Linux counts guest time inside user and nice already)."""
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuProfile(_Periodic):
    """CPU seconds each process group used on this machine while the pipeline ran.

    Every process is sampled every ``every`` seconds (user + system time); a process that existed
    at the start counts from its first sample, a newer one from zero, and one that exits between
    samples keeps its last sample (losing at most ``every`` seconds). Also the machine's busy
    CPU seconds against what its cores could give over the same wall time.
    """

    def __init__(self, every: float = 2.0):
        super().__init__(every)
        self._first: dict[tuple, float] = {}
        self._last: dict[tuple, tuple[str, float]] = {}

    def sample(self, initial: bool = False) -> None:
        import psutil

        for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times", "create_time"]):
            info = proc.info
            if info["cpu_times"] is None:
                continue
            key = (info["pid"], info["create_time"])
            used = info["cpu_times"].user + info["cpu_times"].system
            self._first.setdefault(key, used if initial else 0.0)
            group = cpu_group(" ".join(info["cmdline"] or []), info["name"] or "", info["pid"], os.getpid())
            if key in self._last and not info["cmdline"]:  # an exited worker (zombie) has no command line left
                group = self._last[key][0]
            self._last[key] = (group, used)

    def tick(self) -> None:
        self.sample()

    def __enter__(self) -> CpuProfile:
        import psutil

        self._wall, self._machine = time.perf_counter(), psutil.cpu_times()
        self.sample(initial=True)
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        self.stop()
        self.sample()
        wall = time.perf_counter() - self._wall
        end = psutil.cpu_times()
        self.available_s = wall * (psutil.cpu_count() or 1)
        self.busy_s = _busy_seconds(end) - _busy_seconds(self._machine)
        self.by_group = dict.fromkeys(CPU_GROUPS, 0.0)
        for key, (group, used) in self._last.items():
            self.by_group[group] += used - self._first[key]

    def summary(self) -> dict:
        return {"available_s": round(self.available_s, 1), "busy_s": round(self.busy_s, 1),
                "by_group_s": {g: round(s, 1) for g, s in self.by_group.items()}}


def read_beats(progress: Path) -> list[dict]:
    """The heartbeat entries of ``progress.jsonl`` in the order written (none if it does not exist)."""
    return read_jsonl(progress) if progress.exists() else []


def segments(beats: list[dict]) -> list[dict]:
    """Per segment of a resumed run (from ``read_beats``): start/end time, documents in the store at
    both, load average."""
    by_segment: dict[str, list[dict]] = {}
    for entry in beats:
        by_segment.setdefault(entry["segment"], []).append(entry)
    out = []
    for name, beats in by_segment.items():
        first, last = beats[0], beats[-1]
        out.append({"segment": name, "started": first["t"], "seconds": round(last["t"] - first["t"], 1),
                    "documents_before": first["documents"], "documents_after": last["documents"],
                    "completed": last["event"] == "end",
                    "mean_load_average": round(float(np.mean([b["load_average"] for b in beats])), 2)})
    return sorted(out, key=lambda s: s["started"])


def progress_summary(progress: Path, target: int, window_s: float = 3600.0, now: float | None = None) -> dict:
    """Where a resumable run stands, from its heartbeats alone (nothing is started or queried).

    ``recent_docs_per_s`` is the rate over the last ``window_s`` seconds of the newest segment (past
    its start-up), and ``eta_s`` the remaining documents at that rate. ``running``: the newest segment
    has not ended and beat within the last two minutes.
    """
    beats = read_beats(progress)
    if not beats:
        raise NotFound(f"no heartbeats in {progress}: start the run with --resume first")
    runs = segments(beats)
    newest = [b for b in beats if b["segment"] == runs[-1]["segment"]]
    window = [b for b in newest if b["t"] >= newest[-1]["t"] - window_s]
    span = window[-1]["t"] - window[0]["t"]
    rate = (window[-1]["documents"] - window[0]["documents"]) / span if span > 0 else 0.0
    stored = newest[-1]["documents"]
    now = time.time() if now is None else now
    return {
        "target_documents": target,
        "documents": stored,
        "fraction_done": round(stored / target, 4),
        "segments": len(runs),
        "working_seconds": round(sum(s["seconds"] for s in runs), 1),
        "recent_docs_per_s": round(rate, 2),
        "recent_window_s": round(span, 1),
        "eta_s": round((target - stored) / rate) if rate > 0 and stored < target else None,
        "running": newest[-1]["event"] != "end" and now - newest[-1]["t"] < 120,
        "last_beat_age_s": round(now - newest[-1]["t"], 1),
    }


def sample_chunk_texts(store, limit: int) -> list[str]:
    """"Title: text" for up to ``limit`` stored chunks (a spread: ids are hashes)."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT d.title || ': ' || c.text FROM chunks c JOIN documents d ON d.id = c.doc_id ORDER BY c.id LIMIT %s",
            (limit,),
        ).fetchall()
    return [r[0] for r in rows]


def bare_copy(store, limit: int, with_tsvector: bool = False) -> tuple[float, int]:
    """Rows per second of a binary COPY of stored chunk rows (same vectors) into a plain table.

    ``with_tsvector`` adds the chunks table's generated ``tsvector`` column (no indexes): the part
    of the write cost that is PostgreSQL computing ``to_tsvector('english', text)`` per row.
    """
    extra = ", tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED" if with_tsvector else ""
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT id, doc_id, ord, text, embedding FROM chunks ORDER BY id LIMIT %s",
                            (limit,)).fetchall()
        conn.execute("DROP TABLE IF EXISTS bench_bare_copy")
        conn.execute(f"CREATE TABLE bench_bare_copy (id text, doc_id text, ord integer, text text, embedding vector(384){extra})")
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(
            "COPY bench_bare_copy (id, doc_id, ord, text, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "int4", "text", "vector"])
            for row in rows:
                copy.write_row(row)
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_bare_copy")
    return len(rows) / seconds, len(rows)


def load_vectors(store) -> tuple[list[str], np.ndarray]:
    """All chunk ids and vectors (binary COPY out), for exact search."""
    ids, vectors = [], []
    with store.pool.connection() as conn, conn.cursor().copy(
        "COPY (SELECT id, embedding FROM chunks) TO STDOUT WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["text", "vector"])
        for chunk_id, vector in copy.rows():
            ids.append(chunk_id)
            vectors.append(np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, dtype=np.float32))
    return ids, np.vstack(vectors)


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int, block: int = 100_000) -> np.ndarray:
    """Exact cosine top-k indices, scanning the corpus in blocks (bounded memory at 1M+ rows)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(corpus), block):
        scores = queries @ corpus[start : start + block].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(merged_scores, order, 1), np.take_along_axis(merged_ids, order, 1)
    return best_ids


EF_SEARCH_SWEEP = (40, 160, 320)


def search_quality(store, queries: np.ndarray, k: int = 10, sweep: tuple[int, ...] = EF_SEARCH_SWEEP) -> dict:
    """Recall@k of HNSW search against exact search, and single-query search latency, at the
    store's ``hnsw_ef_search`` (the headline numbers) and at each beam width in ``sweep``."""
    ids, corpus = load_vectors(store)
    truth = [{ids[i] for i in row} for row in exact_top_k(corpus, queries, k)]

    def measure(ef: int) -> dict:
        latencies, recalls = [], []
        for q, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            hits = store.search_vector(q, k, ef_search=ef)
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(len(expected & {h.id for h in hits}) / k)
        return {"ef_search": ef, "recall_at_10": round(float(np.mean(recalls)), 4),
                "search_p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "search_p95_ms": round(float(np.percentile(latencies, 95)), 2)}

    default = store.settings.hnsw_ef_search
    curve = {ef: measure(ef) for ef in sorted({default, *sweep})}
    return {**curve[default], "ef_search_sweep": list(curve.values())}


def held_out_queries(docs: int, seed: int, backend: str, n: int = HELD_OUT) -> np.ndarray:
    """Embeddings of the first chunk of ``n`` synthetic documents after the N ingested ones."""
    from ray_app.corpus.synthetic import BLOCK, generate_block
    from ray_app.ingest.chunking import Chunker
    from ray_app.models.text import get_text_embedder

    first_block = (docs + BLOCK - 1) // BLOCK  # whole blocks past the corpus: never ingested
    records = generate_block(seed, first_block) + generate_block(seed, first_block + 1)
    records = records[:n]
    chunks = Chunker().chunk_many([r["text"] for r in records])
    return get_text_embedder(backend).embed([f"{r['title']}: {c[0]}" for r, c in zip(records, chunks, strict=True)])


def run_benchmark(docs: int, seed: int = 0, workdir: Path | None = None, bare_sample: int = 20_000,
                  threads: int | None = None, backend: str | None = None, queries: int = HELD_OUT,
                  resume: bool = False) -> dict:
    """Build, ingest and measure; returns the report dict (see module docstring)."""
    from ray_app.ingest.job import run_ingest
    from ray_app.models.text import ingest_backend
    from ray_app.store import Store, resolve_url

    started = time.perf_counter()
    backend = ingest_backend(backend)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="prism-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress = workdir / "progress.jsonl"
    if not resume:
        progress.unlink(missing_ok=True)
    build = synthetic_corpus(workdir, docs, seed, resume)
    url = fresh_database(resolve_url(), "prism_bench_" + report_name(docs).replace("-", "_"), keep=resume)
    threads = threads or os.cpu_count() or 1
    with Store(url):  # applies the migrations, so the heartbeat can count documents
        pass
    with Heartbeat(progress, url), CpuProfile() as cpu:
        pipeline = run_ingest(workdir / "corpus", database_url=url, embed_threads=threads, backend=backend,
                              rebuild_index=True, batch_docs=256)
    runs = segments(read_beats(progress))
    last_segment = {"documents": pipeline["written"], "chunks": pipeline["chunks"]}  # what busy times cover
    if len(runs) > 1:  # resumed: rates over every segment's working seconds, not just the last one
        active = sum(s["seconds"] for s in runs) - pipeline["index_build_s"]
        pipeline["docs_per_s"] = round(pipeline["documents"] / active, 2)
        with Store(url) as store:  # a resumed run's total, which no single segment's counters hold
            pipeline["chunks"] = store.counts()["chunks"]
        pipeline["embed_per_s"] = round(pipeline["chunks"] / active, 2)
    with Store(url) as store:
        texts = sample_chunk_texts(store, bare_sample)
        bare_embed_per_s, bare_cpu_ms, _ = bare_embed(texts, backend, threads)
        int8 = ({"onnx-int8": int8_speedup, "torch-bf16": bf16_speedup}[backend](texts[:INT8_SAMPLE], threads)
                if backend in ("onnx-int8", "torch-bf16") else {})
        bare_copy_per_s, copied = bare_copy(store, bare_sample)
        bare_copy_tsv_per_s, _ = bare_copy(store, bare_sample, with_tsvector=True)
        quality = search_quality(store, held_out_queries(docs, seed, backend, queries))
    write_s = pipeline["stage_busy_s"]["write"]
    pipeline_copy_per_s = last_segment["chunks"] / write_s if write_s else 0.0
    result = {
        "documents": pipeline["documents"],
        "chunks": pipeline["chunks"],
        "pipeline_docs_per_s": pipeline["docs_per_s"],
        "pipeline_embed_per_s": pipeline["embed_per_s"],
        "bare_embed_per_s": round(bare_embed_per_s, 2),
        "bare_embed_cpu_ms_per_text": round(bare_cpu_ms, 1),
        "embed_ratio": round(pipeline["embed_per_s"] / bare_embed_per_s, 3),
        "pipeline_write_chunks_per_s": round(pipeline_copy_per_s, 2),
        "bare_copy_rows_per_s": round(bare_copy_per_s, 2),
        "copy_ratio": round(pipeline_copy_per_s / bare_copy_per_s, 3),
        "bare_copy_tsvector_rows_per_s": round(bare_copy_tsv_per_s, 2),
        "copy_ratio_vs_tsvector_copy": round(pipeline_copy_per_s / bare_copy_tsv_per_s, 3),
        "index_build_s": pipeline["index_build_s"],
        **int8,
        **quality,
        "threads": threads,
        "backend": backend,
        "bare_sample": {"texts": len(texts), "copy_rows": copied},
        "held_out_queries": queries,
        "stage_busy_s": pipeline["stage_busy_s"],
        "cpu_profile": cpu.summary(),
        "load_seconds": pipeline["load_seconds"],
        "last_segment": last_segment,
        "corpus_build_s": build["seconds"],
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "segments": runs,
    }
    result["scale_model"] = scale_model(result)
    result["targets"] = TARGETS
    result["met"] = {
        "embed_ratio": result["embed_ratio"] >= TARGETS["embed_ratio"],
        "copy_ratio": result["copy_ratio"] >= TARGETS["copy_ratio"],
        "recall_at_10": result["recall_at_10"] >= TARGETS["recall_at_10"],
        "search_p95_ms": result["search_p95_ms"] <= TARGETS["search_p95_ms"],
    }
    return result


SCALE_NODES = (1, 4, 16, 64, 256)


def scale_model(r: dict, target_docs: int = 1_000_000, writers: int = 1) -> dict:
    """Predicted load times and rates from the stage rates this run measured.

    Each stage's rate is chunks per second while it was busy, on one worker (one prepare actor, one
    embed actor with ``threads`` threads, one ``Store.write`` at a time). On this machine the stages
    share the cores, so a bigger load here runs at the pipeline's measured rate. On N nodes like this
    one, preparing and embedding scale out (N times the node's pipeline rate) while every write goes
    to one PostgreSQL server: ``writers`` concurrent writers at the measured per-writer rate (an
    assumption past one writer: their scaling was not measured here) bound the load once the nodes
    embed faster than that. The HNSW build is scaled as n log n from this run's, a lower bound (the
    1M run's build grew faster: ``ingest-1m.md``).
    """
    seg = r.get("last_segment", {"documents": r["documents"], "chunks": r["chunks"]})
    busy = r["stage_busy_s"]
    rates = {stage: round(seg["chunks"] / busy[stage], 1) for stage in ("prepare", "embed", "write") if busy.get(stage)}
    chunks_per_doc = r["chunks"] / max(r["documents"], 1)
    target_chunks = target_docs * chunks_per_doc
    node_rate = r["pipeline_embed_per_s"]  # chunks/s of the whole pipeline on one node like this one
    write_capacity = writers * rates.get("write", float("inf"))
    n0 = max(r["chunks"], 2)
    hnsw_s = r["index_build_s"] * target_chunks * np.log(target_chunks) / (n0 * np.log(n0))
    cpu = r.get("cpu_profile")
    nodes = []
    for n in SCALE_NODES:
        rate = min(n * node_rate, write_capacity)
        nodes.append({"nodes": n, "chunks_per_s": round(rate, 1), "load_s": round(target_chunks / rate, 1),
                      "bound": "embedding" if n * node_rate <= write_capacity else "postgres writes"})
    return {
        "target_documents": target_docs,
        "chunks_per_doc": round(chunks_per_doc, 3),
        "stage_rates_chunks_per_s": rates,
        "cpu_ms_per_chunk": ({g: round(1000 * v / max(seg["chunks"], 1), 2) for g, v in cpu["by_group_s"].items()}
                             if cpu else None),
        "this_machine": {"load_s": round(target_chunks / node_rate, 1), "hnsw_build_s_lower_bound": round(float(hnsw_s), 1),
                         "bound": "embedding" if node_rate < rates.get("write", float("inf")) else "postgres writes"},
        "writers": writers,
        "write_capacity_chunks_per_s": round(write_capacity, 1),
        "nodes_where_writes_bound": round(write_capacity / node_rate, 1),
        "cpu_nodes": nodes,
    }


def render_scale_model(m: dict) -> list[str]:
    """The scale model's section of the Markdown page."""
    rates = m["stage_rates_chunks_per_s"]
    lines = [
        "", "## Scale model (from this run's stage rates)", "",
        "Chunks per second each stage reached while busy, one worker each: "
        + ", ".join(f"{stage} {rate:,.0f}" for stage, rate in rates.items())
        + f" ({m['chunks_per_doc']:.2f} chunks per document). On this machine the stages share the cores and "
        f"embedding bounds the load: {m['target_documents']:,} documents would load in "
        f"{m['this_machine']['load_s'] / 3600:.1f} h at this run's pipeline rate, then the HNSW build (at least "
        f"{m['this_machine']['hnsw_build_s_lower_bound']:,.0f} s, scaled as n log n).",
        "",
        f"On N nodes like this one, preparing and embedding scale out; the writes go to one PostgreSQL server, "
        f"{m['write_capacity_chunks_per_s']:,.0f} chunks/s with {m['writers']} writer(s) at the measured rate. "
        f"Writes become the bound past about {m['nodes_where_writes_bound']:,.0f} nodes, or with as many GPUs as "
        f"embed {m['write_capacity_chunks_per_s']:,.0f} chunks/s between them (no GPU embed rate was measured "
        "here; `docs/reports/gpu-check.md` is where one goes):",
        "",
        "| nodes | chunks/s | load of the target | bound |", "|---|---|---|---|",
    ]
    lines += [f"| {n['nodes']} | {n['chunks_per_s']:,.0f} | {n['load_s'] / 3600:.2f} h | {n['bound']} |"
              for n in m["cpu_nodes"]]
    lines += ["", "Past one writer the model assumes writers scale with the server's cores (not measured here). At "
              "10M and 100M documents: partition `chunks` by source or hash of `doc_id` so each partition's HNSW "
              "graph fits in memory and builds in parallel; build HNSW on a replica (or a standby restored from "
              "the bulk load) and switch over, rather than on the primary that takes the writes; on an external "
              "server with pgvector >= 0.7, store `halfvec(384)` (half the bytes per vector, HNSW on halfvec) — the "
              "embedded pgvector 0.6.2 has no halfvec."]
    return lines


def render_markdown(r: dict, command: str | None = None) -> str:
    """The Markdown page for ``ingest-<N>.md`` (``command``: the run's, else ``r["command"]``)."""
    command = command or r["command"]
    busy = r["stage_busy_s"]
    # stage busy times and the CPU profile cover the last segment of a resumed run (older reports: one segment)
    seg = r.get("last_segment", {"documents": r["documents"], "chunks": r["chunks"]})
    cpu = r.get("cpu_profile")
    runs = r.get("segments", [])
    if cpu:  # the embed actor works only during the load: its CPU per chunk and share of the cores then
        actor_ms = 1000 * cpu["by_group_s"]["embed actor"] / max(seg["chunks"], 1)
        actor_share = cpu["by_group_s"]["embed actor"] / max(r["load_seconds"] * r["cpu_count"], 1e-9)
    lines = [
        f"# Ingest benchmark: {r['documents']:,} synthetic documents",
        "",
        f"Generated by `{command}` on this machine ({r['cpu_count']} CPUs; 1-minute load average at the end "
        f"{r['load_average'][0]}, the benchmark's own work included). Backend {r['backend']}, {r['threads']} threads.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| documents / chunks | {r['documents']:,} / {r['chunks']:,} | 1,000,000 documents |",
        f"| pipeline docs/s | {r['pipeline_docs_per_s']:.1f} | |",
        f"| pipeline chunks embedded/s (wall) | {r['pipeline_embed_per_s']:.1f} | |",
        f"| bare embed loop texts/s | {r['bare_embed_per_s']:.1f} | |",
        f"| embed_ratio | {r['embed_ratio']:.3f} | >= 0.8 |",
        *([f"| bare loop on {r['int8_sample_texts']:,} of those texts: fp32 / INT8 graph texts/s | "
           f"{r['bare_embed_fp32_per_s']:.1f} / {r['bare_embed_int8_per_s']:.1f} ({r['int8_speedup']:.2f}x) | |"]
          if "int8_speedup" in r else []),
        *([f"| bare loop on {r['bf16_sample_texts']:,} of those texts: fp32 graph / torch bf16 texts/s | "
           f"{r['bare_embed_fp32_per_s']:.1f} / {r['bare_embed_bf16_per_s']:.1f} ({r['bf16_speedup']:.2f}x) | |"]
          if "bf16_speedup" in r else []),
        f"| pipeline chunk rows/s in Store.write | {r['pipeline_write_chunks_per_s']:.1f} | |",
        f"| bare binary COPY rows/s | {r['bare_copy_rows_per_s']:.1f} | |",
        f"| copy_ratio | {r['copy_ratio']:.3f} | >= 0.8 |",
        f"| HNSW build s | {r['index_build_s']:.1f} | |",
        f"| recall@10 (HNSW vs exact, {r['held_out_queries']:,} held-out queries) | {r['recall_at_10']:.3f} | >= 0.95 |",
        f"| search p50 / p95 ms | {r['search_p50_ms']:.1f} / {r['search_p95_ms']:.1f} | p95 <= 50 |",
    ]
    if sweep := r.get("ef_search_sweep"):
        lines += ["", f"Recall and latency against the HNSW query beam (`hnsw.ef_search`; the rows above use "
                  f"{r['ef_search']}, the `PRISM_HNSW_EF_SEARCH` setting):", "",
                  "| ef_search | recall@10 | p50 ms | p95 ms |", "|---|---|---|---|"]
        lines += [f"| {m['ef_search']} | {m['recall_at_10']:.3f} | {m['search_p50_ms']:.1f} | {m['search_p95_ms']:.1f} |"
                  for m in sweep]
    lines += [
        "",
        "## Where the time went (measured)",
        "",
        f"Stage busy seconds summed over the {'last segment' if len(runs) > 1 else 'run'} "
        f"({seg['documents']:,} documents, {seg['chunks']:,} chunks): prepare/chunk {busy['prepare']:.1f}, images {busy['images']:.1f}, "
        f"embed {busy['embed']:.1f}, Store.write {busy['write']:.1f}; pipeline wall time (load) "
        f"{r['load_seconds']:.1f} s.",
    ]
    if cpu:
        groups = cpu["by_group_s"]
        lines += [
            "",
            f"CPU while the pipeline loaded and then built the indexes (`cpu_profile`, sampled per process): the "
            f"cores could give {cpu['available_s']:,.0f} CPU-s and {cpu['busy_s']:,.0f} were used: "
            + ", ".join(f"{g} {v:,.0f}" for g, v in groups.items())
            + f" (PostgreSQL's figure includes the {r['index_build_s']:.0f}-second index build). The embed actor "
            f"used {actor_share:.0%} of what the cores could give during the {r['load_seconds']:,.0f}-second load, "
            f"{actor_ms:.1f} CPU-ms per chunk"
            + (f"; the bare loop, which has the cores to itself, {r['bare_embed_cpu_ms_per_text']:.1f} CPU-ms per text"
               if "bare_embed_cpu_ms_per_text" in r else "") + ".",
        ]
    if len(runs) > 1:
        lines += ["", f"The run was killed and resumed: {len(runs)} segments. Pipeline rates are over their summed "
                  "working seconds (start to last heartbeat); stage busy times are the last segment's.", "",
                  "| segment | seconds | documents before → after | docs/s | completed | mean load average |",
                  "|---|---|---|---|---|---|"]
        for s in runs:  # index_build_s is this (the last) segment's, as in run_benchmark's working seconds
            loading = s["seconds"] - (r["index_build_s"] if s is runs[-1] else 0.0)
            rate = (s["documents_after"] - s["documents_before"]) / max(loading, 1e-9)
            lines.append(f"| {s['segment']} | {s['seconds']:.0f} | {s['documents_before']:,} → {s['documents_after']:,} | "
                         f"{rate:.1f} | {'yes' if s['completed'] else 'stopped'} | {s['mean_load_average']} |")
    missed = [k for k, ok in r["met"].items() if not ok]
    lines += ["", "Targets missed: " + (", ".join(missed) if missed else "none") + "."]
    if "embed_ratio" in r["met"] and not r["met"]["embed_ratio"]:
        util = busy["embed"] / max(r["load_seconds"], 1e-9)
        text = (f"- embed_ratio: the embed actor was busy {busy['embed']:.0f} s of the {r['load_seconds']:.0f}-second "
                f"load ({util:.0%}), {1000 * busy['embed'] / max(seg['chunks'], 1):.1f} ms per chunk against "
                f"{1000 / max(r['bare_embed_per_s'], 1e-9):.1f} ms in the bare loop (wall).")
        if cpu and "bare_embed_cpu_ms_per_text" in r:
            text += (f" In CPU time a chunk costs the actor {actor_ms:.1f} ms and the bare "
                     f"loop {r['bare_embed_cpu_ms_per_text']:.1f} ms, so what bounds the ratio is the share of the "
                     f"{r['cpu_count']} cores the actor gets: {actor_share:.0%} during the load. The "
                     "rest goes to chunking, Ray's other workers and system processes, the driver and PostgreSQL's "
                     "writes, none of which the bare loop runs (CPU by process above).")
        if len(runs) > 1:
            text += (" The ratio is over all segments; the segments table shows each one's rate beside the "
                     "machine's mean load average, which includes any other work that shared it.")
        lines.append(text)
    if "copy_ratio" in r["met"] and not r["met"]["copy_ratio"]:
        tsv = r.get("bare_copy_tsvector_rows_per_s")
        lines.append(
            f"- copy_ratio: `Store.write` was busy {busy['write']:.1f} s for {seg['chunks']:,} chunk rows plus "
            f"{seg['documents']:,} document rows; per block it also checks that the block's documents are new, "
            "then copies them into the tables themselves, which check the primary key, the `(doc_id, ord)` key and "
            "the foreign key to `documents` and fill the generated `tsvector` column (a block holding stored "
            "documents goes through staging tables and `INSERT ... ON CONFLICT`), in one transaction per block of "
            "a few hundred rows and on cores the embed actor is using, where the bare COPY streams plain rows into "
            "an unindexed table after the load, the cores free. (The HNSW and GIN indexes are dropped for this bulk load and "
            "built after it, in `index_build_s`.)")
        if tsv:
            lines.append(
                f"  Measured in the same run: the same bare COPY into a table that only adds the generated "
                f"`tsvector` column runs at {tsv:,.0f} rows/s ({tsv / r['bare_copy_rows_per_s']:.2f} of the plain COPY): "
                "PostgreSQL's `to_tsvector('english', ...)` per row, which full-text and hybrid search need, bounds "
                f"copy_ratio near {tsv / r['bare_copy_rows_per_s']:.2f}; against that baseline the pipeline's write "
                f"reaches {r['copy_ratio_vs_tsvector_copy']:.2f}.")
    if "scale_model" in r:
        lines += render_scale_model(r["scale_model"])
    if r["documents"] < 1_000_000:
        lines += ["", "This report is a smaller run of the same command. The 1,000,000-document run "
                  "(`ingest-1m.{json,md}`; hours on 2 cores: run it in the background, and run it again to continue "
                  "after it is killed):", "",
                  "```", "nohup nice -n 19 prism bench ingest --docs 1000000 --backend onnx-int8 --resume --json >> ingest-1m.out "
                  "2>> ingest-1m.log &", "```"]
    if amended := r.get("amended"):  # fields corrected by hand after the run, each with its source
        lines += ["", "Amended after the run (`amended` in the JSON):", "", *(f"- {a}" for a in amended)]
    lines += ["", "The numbers are in the JSON file next to this one.", ""]
    return "\n".join(lines)


def bench_ingest(config: IngestBenchConfig) -> dict:
    """Run the benchmark and (with ``config.write``) write ``ingest-<N>.{json,md}``; returns the result."""
    result = run_benchmark(config.docs, config.seed, config.run_dir(), config.bare_sample, config.threads,
                           config.backend, queries=config.queries, resume=config.resume)
    command = (f"prism bench ingest --docs {config.docs} --bare-sample {config.bare_sample} --queries {config.queries}"
               + (f" --backend {config.backend}" if config.backend else "") + (" --resume" if config.resume else "")
               + " --json")
    if config.write:
        write_report(config.out, report_name(config.docs), result, render_markdown, command=command)
    return result


def run_progress(config: IngestBenchConfig) -> dict:
    """Where a ``--resume`` run of ``config.docs`` documents stands, from its heartbeats (runs nothing)."""
    workdir = config.run_dir() or IngestBenchConfig(docs=config.docs, resume=True).run_dir()
    return progress_summary(workdir / "progress.jsonl", config.docs)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`IngestBenchConfig`'s."""
    d = IngestBenchConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--docs", type=int_at_least(1), default=d.docs, metavar="N", help="Synthetic documents to ingest.")
    p.add_argument("--seed", type=int, default=d.seed, help="Synthetic corpus seed.")
    p.add_argument("--threads", type=int_at_least(1), default=d.threads, metavar="N",
                   help="Embedding threads, pipeline and bare loop (default: all CPUs).")
    p.add_argument("--backend", choices=EMBED_BACKENDS, default=d.backend,
                   help="Embedding backend of the pipeline, the bare loop and the queries (default: the ingest's, "
                   "PRISM_EMBED_BACKEND with fp32 run as torch-bf16 where the CPU multiplies bf16 natively).")
    p.add_argument("--bare-sample", type=int_at_least(100), default=d.bare_sample, metavar="N",
                   help="Texts/rows for the bare baselines.")
    p.add_argument("--queries", type=int_at_least(10, 2000), default=d.queries, metavar="10..2000",
                   help="Held-out queries for recall/latency.")
    p.add_argument("--workdir", type=Path, default=d.workdir, metavar="DIR",
                   help="Where the corpus shards go (default: a temp dir; with --resume: $PRISM_HOME/bench/ingest-<N>).")
    p.add_argument("--resume", action="store_true", default=d.resume,
                   help="Keep and reuse the corpus and database of an earlier, killed run in --workdir and continue it "
                   "(for multi-hour runs).")
    p.add_argument("--out", type=Path, default=d.out, help="Where ingest-<N>.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    p.add_argument("--progress", action="store_true",
                   help="Only print where a --resume run of this --docs stands (documents stored, recent rate, ETA) "
                   "from its heartbeats; runs nothing.")
    return p


def run_bench(args: dict) -> dict:
    """The benchmark, or with ``progress`` where a resumable run stands, from the parsed arguments."""
    progress = args.pop("progress")
    config = IngestBenchConfig(**args)
    return run_progress(config) if progress else bench_ingest(config)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench ingest`` / ``python -m ray_app.benchmarks.ingest``: run (or ``--progress``), print the result."""
    return run_job(build_parser(prog or PROG), argv, run_bench)


if __name__ == "__main__":
    main()
