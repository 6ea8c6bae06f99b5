"""PII redaction, and the audit log's texts at rest: sealed with AES-GCM under a key kept outside the database,
keyed request hashes, the sealed blob covered by the chain's HMAC, key rotation, and `prism audit show`
decrypting for an operator (real Postgres)."""

import hashlib
import json

import psycopg
import pytest
from typer.testing import CliRunner

from ray_app.audit.chain import (
    AuditEntry,
    append_record,
    ask_records,
    canonical_json,
    chain_files,
    chain_key,
    record_answer,
    request_hash,
    verify_chain,
)
from ray_app.audit.pii import luhn_valid, redact_pii
from ray_app.audit.sealing import ENV_KEYS, SealingError, load_keys, parse_keys, seal, unseal
from ray_app.cli import app
from ray_app.llm.prompting import Passage
from ray_app.store import Store
from tests.conftest import reset_settings
from tests.ray_app.test_audit import tamper

CANARY = "Quillon Marbleworth"


@pytest.mark.parametrize(("text", "expected", "kinds"), [
    ("mail me at jane.doe+frogs@example.co.uk please", "mail me at [EMAIL] please", {"email": 1}),
    ("card 4111 1111 1111 1111, amex 378282246310005", "card [CARD], amex [CARD]", {"card": 2}),
    ("not a card: 4111 1111 1111 1112", "not a card: 4111 1111 1111 1112", {}),  # fails the Luhn check
    ("ssn 219-09-9999 or 219 09 9999", "ssn [SSN] or [SSN]", {"ssn": 2}),
    ("000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000", "000-12-3456 666-12-3456 900-12-3456 "
     "123-00-4567 123-45-0000", {}),  # invalid areas, groups and serials
    ("call +1 (555) 010-7788, 555.010.7788 or +44 20 7946 0958", "call [PHONE], [PHONE] or [PHONE]", {"phone": 3}),
    ("Apollo 11 landed in 1969, 384,400 km away; ISBN 978-3-16-148410-0; v1.2.3 on 2024-05-01",
     "Apollo 11 landed in 1969, 384,400 km away; ISBN 978-3-16-148410-0; v1.2.3 on 2024-05-01", {}),
])
def test_redact_pii(text, expected, kinds):
    redaction = redact_pii(text)
    assert redaction.text == expected and dict(redaction.counts) == kinds
    assert redaction.flags == [f"pii_redacted:{k}" for k in ("card", "ssn", "email", "phone") if k in kinds]


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713") and not luhn_valid("79927398710")


def _passage() -> Passage:
    return Passage(1, "Frog", "Frogs live in ponds.", "d1", "c1", 0.9)


def _answer(store, ask_id: str, question: str, answer: str) -> None:
    record_answer(store, ask_id=ask_id, question=question, answer=answer, passages=[_passage()], vision=None, k=5,
                  versions={"model": "m"}, timings_ms={})


def test_texts_are_sealed_not_in_the_record_and_open_for_an_operator(store, database_url):
    question, answer = f"Where does {CANARY} keep frogs?", f"{CANARY} keeps frogs in ponds [1]."
    _answer(store, "ask1", question, answer)
    with psycopg.connect(database_url) as conn:
        record, sealed, kid = conn.execute("SELECT record, sealed, sealed_key_id FROM audit_log").fetchone()
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM audit_log t").fetchone()[0]
    assert CANARY not in dump and "Quillon" not in json.dumps(record)
    keys = load_keys(store.settings.audit_text_key_path())
    assert record["sealed"] == {"kid": kid, "sha256": hashlib.sha256(bytes(sealed)).hexdigest()}
    assert kid == keys.active and record["v"] == 3
    # the request hash is keyed: the plain sha256 of the question is not in the record
    plain = hashlib.sha256(canonical_json({"question": question, "image_sha256": None, "k": 5}).encode()).hexdigest()
    key = chain_key(chain_files(store)[0])
    assert record["request_hash"] == request_hash(key, question, None, 5) != plain
    assert record["answer_hash"] != hashlib.sha256(answer.encode()).hexdigest()
    (row,) = ask_records(store, "ask1")
    assert row["texts"] == {"question": question, "answer": answer}
    assert verify_chain(store)["ok"]
    shown = CliRunner().invoke(app, ["audit", "show", "ask1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["records"][0]["texts"]["answer"] == answer
    human = CliRunner().invoke(app, ["audit", "show", "ask1"])
    assert f"question: {question}" in human.output


def test_a_replaced_or_moved_blob_is_found(store, database_url):
    _answer(store, "a1", "first question", "first answer")
    _answer(store, "a2", "second question", "second answer")
    keys = load_keys(store.settings.audit_text_key_path())
    _, forged = seal(keys, "a2", {"question": "forged", "answer": "forged"})
    tamper(database_url, "UPDATE audit_log SET sealed = %s WHERE audit_id = 'a2'", params=(forged,))
    result = verify_chain(store)
    assert not result["ok"] and result["first_broken"]["audit_id"] == "a2"
    assert "sealed texts do not match" in result["first_broken"]["reason"]
    with psycopg.connect(database_url) as conn:
        (blob,) = conn.execute("SELECT sealed FROM audit_log WHERE audit_id = 'a1'").fetchone()
    with pytest.raises(SealingError, match="do not open"):
        unseal(keys, "a2", keys.active, blob)  # a1's blob does not open as a2's


def test_rotation_seals_new_records_with_the_new_key_and_old_ones_still_open(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_AUDIT_TEXT_KEY_FILE", str(tmp_path / "texts.key"))
    reset_settings()
    with Store(database_url) as store:
        _rotate(store)


def _rotate(store) -> None:
    _answer(store, "before", "old question", "old answer")
    rotated = CliRunner().invoke(app, ["audit", "rotate-key", "--json"])
    assert rotated.exit_code == 0, rotated.output
    new_kid = json.loads(rotated.output)["key_id"]
    _answer(store, "after", "new question", "new answer")
    before, after = ask_records(store, "before")[0], ask_records(store, "after")[0]
    assert after["record"]["sealed"]["kid"] == new_kid != before["record"]["sealed"]["kid"]
    assert before["texts"]["answer"] == "old answer" and after["texts"]["answer"] == "new answer"
    assert verify_chain(store)["ok"]


def test_keys_from_the_environment(store, monkeypatch):
    monkeypatch.setenv(ENV_KEYS, "k1:" + "11" * 32 + ",k2:" + "22" * 32)
    append_record(store, AuditEntry(request_hash="r", retrieved_ids=[], model="m", adapter=None, answer_hash=None,
                                    flags=[], grounded=None, timings_ms={}, audit_id="env", texts={"question": "q"}))
    (row,) = ask_records(store, "env")
    assert row["record"]["sealed"]["kid"] == "k2" and row["texts"] == {"question": "q"}
    monkeypatch.setenv(ENV_KEYS, "k2:" + "33" * 32)  # the wrong key under the same id
    assert "do not open" in ask_records(store, "env")[0]["texts"]["error"]
    with pytest.raises(SealingError):
        parse_keys(["k1:abcd"], ENV_KEYS)


def test_nul_characters_are_input_errors_not_database_errors():
    """A NUL cannot go into a Postgres text parameter: found by the fuzz run as a 500, now refused as bad input."""
    from pydantic import ValidationError

    from ray_app.ask.requests import AskRequest, SearchRequest
    from ray_app.ask.service import AskInputError, check_question

    with pytest.raises(AskInputError, match="NUL"):
        check_question("where do frogs\x00 live?")
    for model, field in ((AskRequest, "question"), (SearchRequest, "query")):
        with pytest.raises(ValidationError, match="NUL"):
            model.model_validate({field: "frogs\x00"})
