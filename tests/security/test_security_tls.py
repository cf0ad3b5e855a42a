"""TLS and mutual TLS over real sockets: the server's certificate is checked against the CA the
operator gives, and with mTLS a client certificate from another CA is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0
pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs openssl"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, *, server: bool) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        make_ca(d, ca)
    make_leaf(d, "server", "ca", server=True)
    make_leaf(d, "client", "ca", server=False)
    make_leaf(d, "rogue", "other-ca", server=False)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tmp: Path, pki: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "fedmezo.cli.main", "server", "--model", "tiny-random", "--rounds", "1",
           "--port", str(port), "--host", "127.0.0.1", "--state-dir", str(tmp / "state"),
           "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), *extra]  # fmt: skip
    log = (tmp / "server.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}), port


def status(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "fedmezo.cli.main",
        "status",
        "--server",
        f"127.0.0.1:{port}",
        "--json",
        *tls,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def wait_until_serving(
    proc: subprocess.Popen[bytes], port: int, *tls: str
) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        result = status(port, *tls)
        if result.returncode == 0:
            return result
        time.sleep(1.0)
    raise AssertionError(f"server never answered over TLS: {result.stderr}")


def test_tls_server_is_verified_against_the_given_ca(tmp_path: Path, pki: Path) -> None:
    proc, port = start_server(tmp_path, pki)
    try:
        ok = wait_until_serving(proc, port, "--tls-ca", str(pki / "ca.pem"))
        assert json.loads(ok.stdout)["rounds_completed"] == 0
        wrong_ca = status(port, "--tls-ca", str(pki / "other-ca.pem"))
        assert wrong_ca.returncode != 0
        plaintext = status(port, "--insecure")
        assert plaintext.returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mutual_tls_refuses_missing_and_foreign_client_certificates(tmp_path: Path, pki: Path) -> None:
    proc, port = start_server(tmp_path, pki, "--tls-client-ca", str(pki / "ca.pem"))
    ca = ("--tls-ca", str(pki / "ca.pem"))
    try:
        wait_until_serving(
            proc, port, *ca, "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")
        )
        assert status(port, *ca).returncode != 0  # no client certificate
        rogue = ("--tls-cert", str(pki / "rogue.pem"), "--tls-key", str(pki / "rogue.key"))
        assert status(port, *ca, *rogue).returncode != 0  # signed by another CA
    finally:
        proc.terminate()
        proc.wait(timeout=30)
