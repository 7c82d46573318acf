"""Self-signed certificates for tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path, subject_alt_name: str) -> tuple[Path, Path]:
    """A one-day self-signed certificate for ``subject_alt_name`` (e.g. ``DNS:localhost``) and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ipsx-test",
            "-addext",
            f"subjectAltName={subject_alt_name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
