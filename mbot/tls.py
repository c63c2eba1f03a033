"""The server's self-signed certificate: made once with the openssl CLI, then reused.

Agents pin the certificate's SHA-256 fingerprint, so the same files must survive restarts; regenerating them would
lock every pinned agent out.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


class TlsError(Exception):
    """The certificate could not be made or loaded."""


@dataclass(frozen=True)
class Certificate:
    cert_path: Path
    key_path: Path
    fingerprint: str  # lowercase hex SHA-256 of the DER certificate, as agents pin it


def fingerprint_of_pem(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def subject_alt_names(hosts: Iterable[str]) -> str:
    """The subjectAltName value for openssl: IPs as IP:, names as DNS:, no duplicates."""
    entries: list[str] = []
    for host in hosts:
        if not host:
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            entry = f"DNS:{host}"
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def ensure_certificate(data_dir: Path, hosts: Iterable[str]) -> Certificate:
    """Return the certificate in data_dir, creating it (and its 0600 key) on first use."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        _create(data_dir, cert_path, key_path, subject_alt_names(hosts))
    return load_certificate(data_dir)


def load_certificate(data_dir: Path) -> Certificate:
    """The existing certificate; TlsError when there is none yet."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    try:
        fingerprint = fingerprint_of_pem(cert_path.read_text())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate {cert_path}: {exc}") from None
    return Certificate(cert_path, key_path, fingerprint)


def _create(data_dir: Path, cert_path: Path, key_path: Path, sans: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("the openssl command-line tool is not on PATH; install it (e.g. apt-get install openssl)")
    # Written in a private temporary directory and moved into place, so a crash never leaves half a key pair and
    # the key is never readable by others, whatever the umask.
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        tmp_cert, tmp_key = Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE
        cmd = [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "3650", "-subj", "/CN=mbot", "-addext", f"subjectAltName={sans}",
            "-keyout", str(tmp_key), "-out", str(tmp_cert),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TlsError(f"openssl failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        os.chmod(tmp_key, 0o600)
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
    log.info("created a self-signed certificate for %s in %s", sans, data_dir)


def server_context(cert: Certificate) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert.cert_path, cert.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load {cert.cert_path} / {cert.key_path}: {exc}") from None
    return ctx
