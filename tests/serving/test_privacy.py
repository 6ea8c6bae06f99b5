"""Privacy over real HTTP on the real Serve app: the PII canary (made-up name and PII through /v1/ask and the chat
endpoint, then no trace of them in any file under $PRISM_HOME, Postgres data folder included, in Ray's logs or in
any Postgres table; Serve's JSON logs decoded too), the audit texts readable only through `prism audit show`, and the serving role."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from typer.testing import CliRunner

from ray_app.settings import get_settings
from tests.conftest import TEST_HOME
from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)
from tests.serving.test_logs import serve_log_records

NAME = "Quillon Marbleworth"
PII = {"email": "quillon.marbleworth@frogmail.example", "phone": "+1 (555) 013-4477", "card": "4539 1488 0343 6467",
       "ssn": "512-43-8876"}
# Every form a value could be written in: the name's parts, each PII value as sent and without separators.
NEEDLES = sorted({NAME, *NAME.split(), "marbleworth", *PII.values(), "4539148803436467", "15550134477",
                  "5550134477", "512438876", "frogmail"})


def _question(where: str) -> str:
    return (f"My name is {NAME}; mail {PII['email']}, call {PII['phone']}, card {PII['card']}, SSN {PII['ssn']}. "
            f"{where}")


def _ask_everywhere(app) -> list[str]:
    """The canary through /v1/ask (JSON and streamed) and /v1/chat/completions (plain and streamed); ask ids."""
    h, ids = app.headers, []
    r = httpx.post(app.url + "/v1/ask", json={"question": _question("Where do frogs live?"), "max_new_tokens": 12},
                   headers=h, timeout=600)
    assert r.status_code == 200, r.text
    ids.append(r.json()["id"])
    assert {f"pii_redacted:{k}" for k in PII} <= set(r.json()["audit"]["flags"])
    with httpx.stream("POST", app.url + "/v1/ask", headers=h, timeout=600,
                      json={"question": _question("What do tigers eat?"), "stream": True, "max_new_tokens": 12}) as s:
        body = s.read().decode()
    # the last event is done, or flagged when the injection defences withhold the answer: audited either way
    last = body.strip().split("\n\n")[-1]
    assert s.status_code == 200 and last.startswith(("event: done", "event: flagged")), body[-500:]
    ids.append(json.loads(last.split("data: ", 1)[1])["id"])
    messages = [{"role": "system", "content": f"The user is {NAME}."},
                {"role": "user", "content": _question("Where does the lion live?")}]
    r = httpx.post(app.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 12}, headers=h,
                   timeout=600)
    assert r.status_code == 200, r.text
    ids.append(r.json()["prism"]["id"])
    with httpx.stream("POST", app.url + "/v1/chat/completions", headers=h, timeout=600,
                      json={"messages": messages, "max_tokens": 12, "stream": True}) as s:
        assert s.status_code == 200 and "[DONE]" in s.read().decode()
    return ids


def _files_with(needles: list[str], *folders: Path) -> str:
    """``grep`` every file under the folders for any needle (bytes, case-insensitive); the matching lines."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pattern:  # outside the folders searched
        pattern.write("\n".join(needles) + "\n")
        pattern.flush()
        found = subprocess.run(["grep", "-r", "-a", "-i", "-F", "-o", "-H", "-f", pattern.name,
                                *[str(f) for f in folders if f.exists()]],
                               capture_output=True, text=True, errors="replace", timeout=600)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout


def _json_logs_with(needles: list[str], ask_ids: list[str]) -> tuple[list[str], set[str]]:
    """Serve's JSON log records (decoded, every string value) holding a needle, and which of ``ask_ids`` they log."""
    records = serve_log_records()
    lowered = [n.lower() for n in needles]
    hits = [f"{r['_file']}: {needle}" for r in records for value in r.values() if isinstance(value, str)
            for needle in lowered if needle in value.lower()]
    return hits, {r["ask_id"] for r in records if r.get("ask_id") in ask_ids}


def _tables_with(database_url: str, needles: list[str], seen: dict) -> list[str]:
    """``table: needle`` for every row of every table (as text, bytea as hex) holding a needle; counts the tables
    and rows searched into ``seen``."""
    hits = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall()]
        seen["tables"] = len(tables)
        for table in tables:
            seen["rows"] = seen.get("rows", 0) + conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))).fetchone()[0]
            for needle in needles:
                query = sql.SQL("SELECT count(*) FROM {} t WHERE t::text ILIKE %s").format(sql.SQL(table))
                if conn.execute(query, (f"%{needle}%",)).fetchone()[0]:
                    hits.append(f"{table}: {needle}")
    return hits


def test_pii_canary_leaves_no_trace(prism_app, pg_server_url):
    import ray._private.worker as ray_worker  # the session's log folder (tests only)

    ids = _ask_everywhere(prism_app)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # every page on disk, not only in the WAL
    ray_logs = Path(ray_worker._global_node.get_session_dir_path()) / "logs"
    assert ray_logs.is_dir() and any(ray_logs.iterdir())
    file_hits, seen = _files_with(NEEDLES, TEST_HOME, ray_logs), {}
    table_hits = _tables_with(prism_app.database_url, NEEDLES, seen)
    json_hits, json_asks = _json_logs_with(NEEDLES, ids)
    write_report(ids, file_hits, table_hits, seen, ray_logs)
    assert file_hits == ""
    assert table_hits == []
    # the structured logs were searched too, decoded, and they did log these asks (by id only)
    assert json_asks == set(ids), json_asks
    assert json_hits == []
    # ... yet the operator can read what was asked (redacted) and answered
    from ray_app.audit.chain import ask_records
    from ray_app.store import Store

    with Store(prism_app.database_url, migrate=False) as store:
        records = ask_records(store, ids[0])
    question = records[0]["texts"]["question"]
    assert "[EMAIL]" in question and "[PHONE]" in question and "[CARD]" in question and "[SSN]" in question
    assert NAME in question and PII["email"] not in question
    assert records[-1]["record"]["event"] == "completed" and "answer" in records[-1]["texts"]


def write_report(ids: list[str], file_hits: str, table_hits: list[str], seen: dict, ray_logs: Path) -> None:
    """With ``PRISM_CANARY_REPORT=PATH``: what was searched and found, as JSON (docs/reports/security-canary.json)."""
    if not os.environ.get("PRISM_CANARY_REPORT"):
        return
    folders = {"prism_home": TEST_HOME, "ray_logs": ray_logs}
    files = {name: [f for f in folder.rglob("*") if f.is_file() and not f.is_symlink()] for name, folder in folders.items()}
    report = {
        "asks": len(ids) + 1, "routes": ["/v1/ask", "/v1/ask (stream)", "/v1/chat/completions",
                                         "/v1/chat/completions (stream)"],
        "needles": len(NEEDLES), "pii_kinds": sorted(PII),
        "files_searched": {name: len(fs) for name, fs in files.items()},
        "bytes_searched": {name: sum(f.stat().st_size for f in fs) for name, fs in files.items()},
        "postgres_data_folder_included": (TEST_HOME / "pg").is_dir(),
        "tables_searched": seen.get("tables", 0), "rows_searched": seen.get("rows", 0),
        "file_matches": len(file_hits.splitlines()), "table_matches": len(table_hits),
        "load_average": list(os.getloadavg()),
        "command": "PRISM_CANARY_REPORT=docs/reports/security-canary.json pytest -q "
                   "tests/serving/test_privacy.py::test_pii_canary_leaves_no_trace",
    }
    Path(os.environ["PRISM_CANARY_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")


def test_prism_audit_show_decrypts_and_verify_passes(prism_app, monkeypatch):
    r = httpx.post(prism_app.url + "/v1/ask", json={"question": "Where do frogs live?", "max_new_tokens": 8},
                   headers=prism_app.headers, timeout=600)
    assert r.status_code == 200, r.text
    monkeypatch.setenv("DATABASE_URL", prism_app.database_url)
    from ray_app.cli import app
    from tests.conftest import reset_settings

    reset_settings()
    shown = CliRunner().invoke(app, ["audit", "show", r.json()["id"], "--json"])
    assert shown.exit_code == 0, shown.output
    completed = json.loads(shown.output)["records"][-1]
    assert completed["texts"] == {"question": "Where do frogs live?", "answer": r.json()["answer"]}
    verified = CliRunner().invoke(app, ["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.output)["ok"], verified.output


def test_serve_connects_as_the_serving_role(prism_app):
    r = httpx.post(prism_app.url + "/v1/search", json={"query": "frogs"}, headers=prism_app.headers, timeout=120)
    assert r.status_code == 200
    with psycopg.connect(prism_app.database_url, autocommit=True) as conn:
        users = {row[0] for row in conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")}
    assert get_settings().serving_role in users, users
