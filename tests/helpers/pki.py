"""A throw-away openssl PKI for TLS tests: two CAs, a server certificate for 127.0.0.1/localhost, and a
client certificate from each CA (so mTLS can be shown to refuse a certificate from a foreign CA)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["has_openssl", "make_ca", "make_leaf", "make_pki"]


def has_openssl() -> bool:
    return shutil.which("openssl") is not None


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    """A self-signed CA: d/name.pem and d/name.key."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, *, server: bool) -> None:
    """A certificate signed by `ca`: for 127.0.0.1/localhost (server) or for client authentication."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)  # fmt: skip


def make_pki(d: Path) -> Path:
    """ca and other-ca; server (by ca), client (by ca) and rogue (by other-ca) certificates; returns d."""
    for ca in ("ca", "other-ca"):
        make_ca(d, ca)
    make_leaf(d, "server", "ca", server=True)
    make_leaf(d, "client", "ca", server=False)
    make_leaf(d, "rogue", "other-ca", server=False)
    return d
