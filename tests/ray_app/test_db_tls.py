"""`sslmode` of an external DATABASE_URL is honoured: a second PostgreSQL listening on TCP with TLS and a self-signed
certificate (Debian's PostgreSQL 15: pgserver's build has no SSL, and this one has no pgvector, so the check is on
the connections Prism derives, not on a Store); the owner's URL as Prism resolves it and the serving role's
derived URL both connect over TLS when the URL asks for it (verify-full), and a wrong trust anchor is refused."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from ray_app.store import resolve_url
from ray_app.store.roles import serving_url
from tests.conftest import reset_settings
from tests.serving.harness import free_port
from tests.serving.test_tls import self_signed

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
POSTGRES_BIN_PATH = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture()
def tls_server():
    """``(port, certificate)`` of a throwaway server with ``ssl=on`` on 127.0.0.1 (stopped and removed after)."""
    if not (POSTGRES_BIN_PATH / "initdb").exists():
        pytest.skip(f"no PostgreSQL built with SSL at {POSTGRES_BIN_PATH} (Debian's postgresql-15)")
    user = "pgserver" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
    folder = Path(tempfile.mkdtemp(prefix="prism-tls-pg-"))
    cert, key = self_signed(folder)
    data = folder / "data"
    if user:
        shutil.chown(folder, user)
        for path in (cert, key):
            shutil.chown(path, user)
    run = {"user": user, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], **run)
    port = free_port()
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c ssl=on "
               f"-c ssl_cert_file={cert} -c ssl_key_file={key}")
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                    str(folder / "log"), "start"], **run)
    try:
        yield port, cert
    finally:
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       **(run | {"check": False}))
        shutil.rmtree(folder, ignore_errors=True)


def test_sslmode_of_an_external_database_url_is_honoured(tls_server, monkeypatch, tmp_path):
    port, cert = tls_server
    base = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(f"{base}?sslmode=disable") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is False
    url = f"{base}?sslmode=verify-full&sslrootcert={cert}"
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings()
    try:
        owner = resolve_url()  # what every owner-side Store connects with
        with psycopg.connect(owner) as conn:
            assert conn.execute(SSL_IN_USE).fetchone()[0] is True
            conn.execute("CREATE ROLE prism_serving LOGIN")
            conn.commit()
        with psycopg.connect(serving_url(owner)) as conn:  # the serving role's derived URL keeps sslmode
            assert conn.execute("SELECT current_user").fetchone()[0] == "prism_serving"
            assert conn.execute(SSL_IN_USE).fetchone()[0] is True
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
        other, _ = self_signed(tmp_path)
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(f"{base}?sslmode=verify-full&sslrootcert={other}", connect_timeout=10)
    finally:
        reset_settings()
