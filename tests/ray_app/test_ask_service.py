"""The ask service on real stages: a real store, MiniLM, SmolLM2 and the audit chain.

The same service runs behind `prism ask`, the answer evaluation and the Serve ingress; here it
runs in-process with the local stages of ``ray_app.ask.stages``.
"""

import asyncio

import pytest

from ray_app.ask.service import AskInputError, AskOptions, AskService
from ray_app.ask.stages import (
    CheckOnlyAudit,
    FixedPassages,
    LocalGenerate,
    LocalRetrieve,
    LocalVision,
    LoggedAudit,
)
from ray_app.audit.chain import last_records, verify_chain
from ray_app.llm.prompting import NOT_IN_SOURCES, Passage
from ray_app.store import ChunkRow, DocumentRow, content_hash
from ray_app.vision.analyzer import ImageRejected

FROG = "Frog: Frogs are amphibians. Frogs live in ponds, marshes and rainforests on every continent but Antarctica."


@pytest.fixture(scope="module")
def llm():
    from ray_app.models.llm import load_llm

    return load_llm(adapter="")


def write_frog(store, text_embedder) -> None:
    doc = DocumentRow("frog", "test", "Frog", content_hash(FROG), 1)
    store.write([doc], [ChunkRow("frog", 0, FROG, text_embedder.embed([FROG])[0])])


def collect(service: AskService, question: str, image: bytes | None = None, **options) -> list:
    async def run():
        return [event async for event in service.stream(question, image, AskOptions(**options))]

    return asyncio.run(run())


def test_events_meta_tokens_done_and_one_audit_record(store, text_embedder, llm):
    write_frog(store, text_embedder)
    service = AskService(LocalVision(store, text_embedder), LocalRetrieve(store, text_embedder), LocalGenerate(llm),
                         LoggedAudit(store, text_embedder))
    events = collect(service, "Where do frogs live?", max_new_tokens=12)

    kinds = [e.kind for e in events]
    assert kinds[0] == "meta" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    meta, done = events[0].data, events[-1].data
    assert meta["passages"][0]["chunk_id"] == "frog:0" and meta["passages"][0]["n"] == 1
    assert done["id"] == meta["id"] == done["audit"]["audit_id"]
    assert done["answer"] == "".join(e.data["text"] for e in events[1:-1]).strip()
    assert {"retrieval_ms", "ttft_ms", "generation_ms", "total_ms", "audit_ms"} <= set(done["timings_ms"])
    record = last_records(store, 1)[0]
    assert record["audit_id"] == done["id"] and record["record"]["retrieved_ids"] == ["frog:0"]
    assert record["record"]["model"].startswith("smollm2") and record["record"]["image_encoder"] is None
    assert verify_chain(store)["ok"]


def test_nothing_relevant_answers_not_in_sources_without_the_llm(store, text_embedder):
    # An empty store: the generator (no model at all) must never be called.
    service = AskService(None, LocalRetrieve(store, text_embedder), LocalGenerate(llm=None),
                         CheckOnlyAudit(), None)
    service._versions = {"model": "none", "adapter": None}
    done = asyncio.run(service.ask("Where do frogs live?"))
    assert done["answer"] == NOT_IN_SOURCES and done["citations"] == []
    assert "no_passages" in done["audit"]["flags"]


def test_input_errors_are_raised_before_the_first_event(store, text_embedder):
    service = AskService(LocalVision(store, text_embedder), FixedPassages([]), LocalGenerate(llm=None),
                         CheckOnlyAudit())

    def first(question, image=None, **options):
        return asyncio.run(anext(service.stream(question, image, AskOptions(**options))))

    with pytest.raises(AskInputError, match="empty"):
        first("   ")
    with pytest.raises(AskInputError, match="k must be"):
        first("frogs?", k=99)
    with pytest.raises(ImageRejected) as rejected:
        first("what is this?", b"plain text, not an image")
    assert rejected.value.code == "unsupported_media_type"
    no_vision = AskService(None, FixedPassages([]), LocalGenerate(llm=None), CheckOnlyAudit())
    with pytest.raises(AskInputError, match="without images"):
        asyncio.run(anext(no_vision.stream("what is this?", b"\x89PNG")))


def test_fixed_passages_and_check_only_audit_write_no_log(store, llm):
    passages = [Passage(1, "Frog", FROG.removeprefix("Frog: "), "frog", "frog:0", 1.0)]
    service = AskService(None, FixedPassages(passages), LocalGenerate(llm), CheckOnlyAudit())
    done = asyncio.run(service.ask("Where do frogs live?", options=AskOptions(max_new_tokens=8)))
    assert done["answer"] and isinstance(done["audit"]["grounded"], bool)
    assert last_records(store, 1) == []


def test_an_ask_past_the_servers_time_limit_ends_with_a_timeout(store, llm):
    from ray_app.ask.service import AskTimeout
    from ray_app.settings import Settings

    passages = [Passage(1, "Frog", FROG.removeprefix("Frog: "), "frog", "frog:0", 1.0)]
    settings = Settings(ask_timeout_s=0.3, max_new_tokens=400)
    service = AskService(None, FixedPassages(passages), LocalGenerate(llm, settings), CheckOnlyAudit(), settings)
    seen = []

    async def run():
        async for event in service.stream("Tell me everything about frogs.", None, AskOptions(max_new_tokens=400)):
            seen.append(event.kind)

    with pytest.raises(AskTimeout):
        asyncio.run(run())
    assert seen and seen[0] == "meta" and "done" not in seen
