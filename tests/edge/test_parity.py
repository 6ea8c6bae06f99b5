"""The exported LLM against torch on the same prompts (real SmolLM2), and the edge index against pgvector.

fp32 ONNX must give torch fp32's greedy tokens exactly; int4's teacher-forced top-1 agreement is measured
(the issue's target is 95 %; docs/reports/edge.md has the measurement on the bench's prompts). Prompts are the
server's answer prompts (system prompt, numbered passages, question).
"""

import uuid

import numpy as np
import psycopg
import pytest

from edge.llm import EdgeLLM
from edge.parity import greedy_parity, top1_agreement
from ray_app.llm.generate import render_prompt
from ray_app.llm.prompting import Passage

PASSAGES = [
    [Passage(1, "Frog", "Frogs are amphibians that live in ponds, marshes and rainforests.")],
    [Passage(1, "Moon", "The Moon is Earth's only natural satellite."), Passage(2, "Sun", "The Sun is a star.")],
    [Passage(1, "Coffee", "Coffee is brewed from roasted coffee beans, the seeds of Coffea berries.")],
    [Passage(1, "Rocket", "A rocket uses jet propulsion to reach space. Rockets carry astronauts to orbit.")],
]
QUESTIONS = ["Where do frogs live?", "What is the Moon?", "What is coffee made from?", "How do astronauts reach space?"]


@pytest.fixture(scope="module")
def torch_llm():
    from ray_app.models.llm import load_llm

    return load_llm(adapter="", dtype="float32")


@pytest.fixture(scope="module")
def prompts(torch_llm):
    return [render_prompt(torch_llm.tokenizer, q, p, None, 256) for q, p in zip(QUESTIONS, PASSAGES, strict=True)]


def edge_llm(variant: str) -> EdgeLLM:
    from edge.export import cached_llm_build
    from ray_app.settings import get_settings

    return EdgeLLM(cached_llm_build(variant, get_settings()), threads=2)


def test_the_edge_tokenizer_renders_the_servers_prompt(torch_llm, prompts):
    from ray_app.llm.prompting import special_strings

    edge = edge_llm("int4")
    assert special_strings(edge.tokenizer) == special_strings(torch_llm.tokenizer)
    long = [Passage(1, "Frog", "Frogs <|im_end|> live in ponds. " * 60)]
    ours = render_prompt(edge.tokenizer, "Where?", long, "it shows: frog", 256)
    assert ours == render_prompt(torch_llm.tokenizer, "Where?", long, "it shows: frog", 256)
    assert edge.tokenizer.encode(ours) == torch_llm.tokenizer(ours, add_special_tokens=False)["input_ids"]


def test_fp32_onnx_gives_torch_fp32_greedy_tokens(torch_llm, prompts):
    rows = greedy_parity(edge_llm("fp32"), torch_llm, prompts, max_new_tokens=24)
    assert all(r["edge"] for r in rows)
    assert [r["edge"] for r in rows] == [r["torch"] for r in rows]


def test_int4_top1_agreement_is_measured(torch_llm, prompts):
    result = top1_agreement(edge_llm("int4"), torch_llm, prompts, max_new_tokens=32)
    print("int4 teacher-forced top-1 agreement:", result)
    assert result["tokens"] >= 40
    # Four prompts are too few to test the 95 % target (docs/reports/edge.md measures it, for the default
    # kquant-mixed recipe and the others); the floor catches a broken build.
    assert result["agreement"] >= 0.75


def test_edge_index_recall_at_10_matches_pgvector(pg_server_url, text_embedder, tmp_path):
    from edge.export import export_index
    from edge.index import EdgeIndex
    from ray_app.corpus.wiki import build_records
    from ray_app.settings import get_settings
    from ray_app.store import ChunkRow, DocumentRow, Store, content_hash

    records = list(build_records(limit=400))
    texts = [f"{r['title']}: {r['text'][:500]}" for r in records]
    vectors = text_embedder.embed(texts)
    name = f"t_edge_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        with Store(pg_server_url.replace("/postgres?", f"/{name}?")) as store:
            store.write([DocumentRow(r["id"], "wiki", r["title"], content_hash(t), 1) for r, t in zip(records, texts, strict=True)],
                        [ChunkRow(r["id"], 0, t, v) for r, t, v in zip(records, texts, vectors, strict=True)])
            export_index(tmp_path / "index.sqlite", get_settings(), None, None, store, [])
            index = EdgeIndex(tmp_path / "index.sqlite")
            questions = text_embedder.embed([f"What is {r['title']}?" for r in records[::8]])
            exact = [set(np.argsort(-(vectors @ q))[:10]) for q in questions]
            ids = [f"{r['id']}:0" for r in records]
            def recall(search):
                found = [{ids.index(h.id) for h in search(q)} for q in questions]
                return np.mean([len(f & e) / 10 for f, e in zip(found, exact, strict=True)])
            edge = recall(lambda q: index.search_vector(q, 10))
            pg = recall(lambda q: store.search_vector(q, 10))
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert edge >= pg - 0.01 and edge > 0.99
