"""The Idempotency-Key store on a real Postgres: claim, conflict while running, replay once done, a key reused for
another request refused, a failed ask's key given back, a claim whose ingress died taken over."""

import pytest

from ray_app.ask.idempotency import (
    IdempotencyConflict,
    IdempotencyKeyReused,
    IdempotencyStore,
    check_key,
    request_hash,
)
from ray_app.audit.sealing import SealingError
from ray_app.errors import InputError


def test_claim_conflict_replay_reuse_release_takeover(store):
    keys = IdempotencyStore(store)
    ask = request_hash({"question": "Where do frogs live?", "k": 3}, None)
    other = request_hash({"question": "Where do frogs live?", "k": 3}, b"an image")
    assert ask != other

    claim = keys.claim("key1", "retry-1", ask)
    assert claim.response is None
    with pytest.raises(IdempotencyConflict) as running:
        keys.claim("key1", "retry-1", ask)
    assert running.value.retry_after_s > 0
    assert keys.claim("key2", "retry-1", ask).response is None  # keys are per caller

    keys.complete(claim, {"id": "a1", "answer": "In ponds [1]."})
    assert keys.claim("key1", "retry-1", ask).response == {"id": "a1", "answer": "In ponds [1]."}
    with pytest.raises(IdempotencyKeyReused):
        keys.claim("key1", "retry-1", other)

    failed = keys.claim(None, "retry-2", ask)
    keys.release(failed)
    assert keys.claim(None, "retry-2", ask).response is None  # the retry runs anew

    with store.pool.connection() as conn:  # an ingress that died mid-ask left its claim behind
        conn.execute("UPDATE ask_idempotency SET updated_at = now() - interval '1 hour' WHERE key = 'retry-2'")
    assert keys.claim(None, "retry-2", ask).response is None


@pytest.mark.parametrize("bad", ["", " ", "has space", "x" * 256, "naïve"])
def test_bad_keys_are_input_errors(bad):
    with pytest.raises(InputError):
        check_key(bad)
    assert check_key("  7c4e-retry_1  ") == "7c4e-retry_1"


def test_the_table_holds_no_answer_or_question_in_clear(store):
    keys = IdempotencyStore(store)
    ask = request_hash({"question": "Where does Zanthor Quillby live?", "k": 3}, None)
    claim = keys.claim("key1", "sealed-1", ask)
    keys.complete(claim, {"id": "a2", "answer": "Zanthor Quillby lives in Vexmoor [1]."})
    with store.pool.connection() as conn:
        row = conn.execute("SELECT request_hash, response::text FROM ask_idempotency WHERE key = 'sealed-1'").fetchone()
    assert "Zanthor" not in row[1] and "Vexmoor" not in row[1]
    assert row[0] != ask  # keyed: the plain sha256 of the request cannot be matched against the table
    assert keys.claim("key1", "sealed-1", ask).response["answer"] == "Zanthor Quillby lives in Vexmoor [1]."
    with store.pool.connection() as conn:  # a sealed answer moved to another row does not open there
        conn.execute("INSERT INTO ask_idempotency (caller, key, request_hash, state, response) "
                     "SELECT caller, 'sealed-2', request_hash, state, response FROM ask_idempotency WHERE key = 'sealed-1'")
    with pytest.raises(SealingError, match="do not open"):
        keys.claim("key1", "sealed-2", ask)
