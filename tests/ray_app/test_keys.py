"""API keys and per-key limits on a real Postgres: `prism keys` end to end, only a salted hash stored, and the
limits shared by every guard (every ingress replica holds one) because they are counted in the database."""

import json

import pytest
from typer.testing import CliRunner

from ray_app.auth.guard import Guard, RateLimited
from ray_app.auth.keys import MissingKey, RevokedKey, check_key, create_key
from ray_app.settings import Settings


def _prism(*args: str):
    from ray_app.cli import app

    return CliRunner().invoke(app, list(args))


def test_keys_create_list_revoke(database_url):
    created = _prism("keys", "create", "alice", "--rpm", "7", "--tokens-per-day", "123456789012", "--json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert {"id", "name", "key"} <= set(key) and key["name"] == "alice" and key["key"].startswith(f"prism_{key['id']}_")

    listed = _prism("keys", "list", "--json")
    assert key["key"] not in listed.stdout
    (row,) = json.loads(listed.stdout)["keys"]
    assert row["id"] == key["id"] and row["rpm"] == 7 and row["tokens_per_day"] == 123456789012
    assert row["revoked_at"] is None

    revoked = _prism("keys", "revoke", key["id"], "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked"][0]["id"] == key["id"]
    assert json.loads(_prism("keys", "list", "--json").stdout)["keys"][0]["revoked_at"]
    again = _prism("keys", "revoke", key["id"])
    assert again.exit_code == 2 and "no live key" in again.output


def test_only_a_salted_hash_is_stored(store):
    _, key_a = create_key(store, "a", 10, 10)
    _, key_b = create_key(store, "b", 10, 10)
    secret = key_a.rsplit("_", 1)[1]
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT id, kdf, salt, hash FROM api_keys ORDER BY name").fetchall()
        dump = json.dumps(conn.execute("SELECT to_jsonb(k) FROM api_keys k").fetchall(), default=str)
    assert secret not in dump and key_a not in dump
    assert rows[0][1].startswith("scrypt:") and bytes(rows[0][2]) != bytes(rows[1][2])  # one salt per key
    assert check_key(store, key_b).name == "b"
    with pytest.raises(MissingKey):
        check_key(store, key_a[:-1] + ("0" if key_a[-1] != "0" else "1"))  # one digit wrong


def test_guard_statuses(store):
    guard = Guard(store, Settings(auth="on"))
    with pytest.raises(MissingKey):
        guard.admit(None)
    with pytest.raises(MissingKey):
        guard.admit("Bearer not-a-prism-key")
    row, key = create_key(store, "c", 100, 100)
    assert guard.admit(f"Bearer {key}").caller == row.id
    with store.pool.connection() as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (row.id,))
    with pytest.raises(RevokedKey):
        guard.admit(f"Bearer {key}")  # the cached scrypt check does not skip the revocation check


def test_auth_off_admits_anonymously():
    admission = Guard(None, Settings(auth="off")).admit(None, uses_llm=True)
    assert admission.caller is None and admission.headers == {}


def test_limits_are_shared_by_two_guards(store):
    """Two guards (two ingress replicas) on one database: 5 requests a minute in all, not 5 each."""
    replicas = [Guard(store, Settings(auth="on")), Guard(store, Settings(auth="on"))]
    _, key = create_key(store, "shared", rpm=5, tokens_per_day=1000)
    admitted = [replicas[i % 2].admit(f"Bearer {key}") for i in range(5)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in admitted] == ["4", "3", "2", "1", "0"]
    with pytest.raises(RateLimited) as refused:
        replicas[1].admit(f"Bearer {key}")
    assert refused.value.kind == "requests" and 0 < refused.value.retry_after_s <= 60
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_day(store):
    guards = [Guard(store, Settings(auth="on")), Guard(store, Settings(auth="on"))]
    row, key = create_key(store, "tokens", rpm=100, tokens_per_day=500)
    first = guards[0].admit(f"Bearer {key}", uses_llm=True)
    assert first.headers["x-ratelimit-remaining-tokens"] == "500"
    guards[0].charge_tokens(row.id, 300)
    assert guards[1].admit(f"Bearer {key}", uses_llm=True).headers["x-ratelimit-remaining-tokens"] == "200"
    guards[1].charge_tokens(row.id, 250)
    assert guards[1].admit(f"Bearer {key}").caller == row.id  # routes without the LLM still work
    with pytest.raises(RateLimited) as refused:
        guards[0].admit(f"Bearer {key}", uses_llm=True)
    assert refused.value.kind == "tokens" and 0 < refused.value.retry_after_s <= 86400


def test_a_burst_with_a_new_key_runs_one_scrypt_check(store, monkeypatch):
    """60 simultaneous requests with a key this replica has not seen: one key derivation, every one admitted."""
    from concurrent.futures import ThreadPoolExecutor

    import ray_app.auth.guard as guard_module

    _, key = create_key(store, "burst", rpm=1000, tokens_per_day=10**9)
    checks = []

    def counted_check(store_, key_):
        checks.append(key_)
        return check_key(store_, key_)

    monkeypatch.setattr(guard_module, "check_key", counted_check)
    guard = Guard(store, Settings(auth="on"))
    with ThreadPoolExecutor(16) as pool:
        admissions = list(pool.map(lambda _: guard.admit(f"Bearer {key}"), range(60)))
    assert len(checks) == 1
    assert {a.caller for a in admissions} == {key.split("_")[1]}
    with pytest.raises(MissingKey):  # a wrong secret for the same id is still checked, and refused
        guard.admit(f"Bearer {key[:-4]}0000")
