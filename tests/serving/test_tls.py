"""HTTPS: with a certificate configured (PRISM_TLS_CERTFILE / PRISM_TLS_KEYFILE), Serve's HTTP server speaks TLS.

A self-signed certificate made here with `cryptography`; a private Ray instance in a subprocess starts Serve with
the options :func:`serving.app.http_options` builds from serving/config.yaml and the settings (a small app behind
it: the proxy's TLS does not depend on the app), then the test calls it over https, verifying the certificate, and
sees plain http refused.
"""

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.app import http_options, load_config
from tests.conftest import REPO, reset_settings
from tests.serving.harness import free_port

SERVER = """
import sys, time
import ray
from ray import serve
from serving.app import http_options, load_config
from serving.noop import app
ray.init(num_cpus=1, include_dashboard=False, namespace="tls-test", log_to_driver=False)
serve.start(http_options=http_options(load_config(host="127.0.0.1", port=int(sys.argv[1]))))
serve.run(app, name="noop", route_prefix="/")
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def self_signed(folder) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_http_options_need_both_files(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("PRISM_TLS_CERTFILE", cert)
    reset_settings()
    from ray_app.errors import InputError

    with pytest.raises(InputError, match="both"):
        http_options(load_config())
    monkeypatch.setenv("PRISM_TLS_KEYFILE", key)
    reset_settings()
    assert http_options(load_config())["ssl_certfile"] == cert and http_options(load_config())["ssl_keyfile"] == key
    monkeypatch.delenv("PRISM_TLS_CERTFILE")
    monkeypatch.delenv("PRISM_TLS_KEYFILE")
    reset_settings()
    assert "ssl_certfile" not in http_options(load_config())


def test_serve_speaks_https_with_a_configured_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = dict(os.environ, PRISM_TLS_CERTFILE=cert, PRISM_TLS_KEYFILE=key, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=cert)
        deadline, response = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the proxy answers 404 until the app's route is registered: wait for the route, not just the port
                response = httpx.get(f"https://127.0.0.1:{port}/noop", verify=context, timeout=10)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert response is not None, proc.stdout.read() if proc.poll() is not None else "no answer over https"
        assert response.status_code == 200 and response.json() == {"ok": True}
        served = ssl.get_server_certificate(("127.0.0.1", port))  # the certificate configured, over a TLS handshake
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
        with pytest.raises(httpx.HTTPError):  # plain http to the TLS port gets no HTTP answer
            r = httpx.get(f"http://127.0.0.1:{port}/noop", timeout=10)
            r.raise_for_status()
        with pytest.raises(httpx.ConnectError):  # nor does a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{port}/noop", timeout=10)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
