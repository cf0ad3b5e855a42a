"""TLS and mutual TLS over real sockets: the server's certificate is checked against the CA the
operator gives, and with mTLS a client certificate from another CA is refused."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers.pki import has_openssl, make_pki
from helpers.processes import FEDMEZO, START_TIMEOUT_S, free_port, spawn, subprocess_env

pytestmark = pytest.mark.skipif(not has_openssl(), reason="needs openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_server(tmp: Path, pki: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["server", "--model", "tiny-random", "--rounds", "1", "--port", str(port), "--host", "127.0.0.1",
            "--state-dir", str(tmp / "state"), "--tls-cert", str(pki / "server.pem"),
            "--tls-key", str(pki / "server.key"), *extra]  # fmt: skip
    return spawn(args, tmp / "server.log"), port


def status(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    cmd = [*FEDMEZO, "status", "--server", f"127.0.0.1:{port}", "--json", *tls]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=subprocess_env())


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
