"""The Idempotency-Key store on a real Postgres: claim, conflict while running, replay once done, a key reused for
another request refused, a failed ask's key given back, a claim whose ingress died taken over."""

import subprocess
import sys
import time

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
    retried = keys.claim(None, "retry-2", ask)
    assert retried.response is None  # the retry runs anew
    keys.release(retried)


CHILD = """
import sys, time
from ray_app.ask.idempotency import IdempotencyStore
from ray_app.store import Store
claim = IdempotencyStore(Store(sys.argv[1])).claim("key1", "killed-1", sys.argv[2])
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_claim_whose_runner_was_killed_is_taken_over_at_once(store):
    """An ingress replica SIGKILLed mid-ask: while it lives a retry is told "still running"; once it is gone
    the retry runs the ask (its session, and the key's advisory lock, went with it), not minutes later."""
    keys = IdempotencyStore(store)
    ask = request_hash({"question": "Where do frogs live?", "k": 3}, None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, store.url, ask], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "claimed"
        with pytest.raises(IdempotencyConflict):
            keys.claim("key1", "killed-1", ask)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while True:  # Postgres ends the session when the killed process's socket closes (milliseconds)
        try:
            claim = keys.claim("key1", "killed-1", ask)
            break
        except IdempotencyConflict:
            assert time.monotonic() < deadline, "the dead runner's claim was never taken over"
            time.sleep(0.05)
    assert claim.response is None and claim.owner is not None
    keys.complete(claim, {"id": "a3", "answer": "In ponds [1]."})
    assert claim.owner is None
    assert keys.claim("key1", "killed-1", ask).response["id"] == "a3"


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
