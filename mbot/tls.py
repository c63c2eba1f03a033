"""The server's self-signed certificate: made once with the openssl CLI, then reused.

Agents pin the certificate's SHA-256 fingerprint, so the same files must survive restarts; regenerating them would
lock every pinned agent out. So a new certificate is made silently only while no host has been given the
fingerprint; after that, missing files are refused and replacing them is the operator's decision (new-cert).
"""
from __future__ import annotations

import contextlib
import fcntl
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
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
LOCK_FILE = ".cert.lock"
NEW_CERT = "python -m mbot new-cert"


class TlsError(Exception):
    """The certificate could not be made or loaded."""


class CertificateRefused(TlsError):
    """The certificate files cannot be used as they are, and making new ones would lock pinned agents out: the
    operator chooses (restore the files, or new-cert). Said in one line, exit status 2 like a bad setting."""


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


def ensure_certificate(data_dir: Path, hosts: Iterable[str], *, pinned_hosts: int = 0,
                       known_fingerprint: str | None = None) -> Certificate:
    """Return the certificate in data_dir, creating it (and its 0600 key) on first use.

    `pinned_hosts` hosts have been given the fingerprint (`known_fingerprint`, when it was recorded): when there are
    any, missing files (or half a pair) are CertificateRefused instead of replaced."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    with _creation_lock(data_dir):
        missing = [path for path in (cert_path, key_path) if not path.exists()]
        if missing and pinned_hosts:
            raise CertificateRefused(_gone(data_dir, missing, pinned_hosts, known_fingerprint))
        if missing:
            _create(data_dir, cert_path, key_path, subject_alt_names(hosts))
        return load_certificate(data_dir)


def replace_certificate(data_dir: Path, hosts: Iterable[str]) -> Certificate:
    """A new certificate and key in place of whatever is there (new-cert): the operator's decision, never ours."""
    with _creation_lock(data_dir):
        _create(data_dir, data_dir / CERT_FILE, data_dir / KEY_FILE, subject_alt_names(hosts))
        return load_certificate(data_dir)


def load_certificate(data_dir: Path) -> Certificate:
    """The existing certificate, checked against its key; TlsError when there is none yet."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    try:
        fingerprint = fingerprint_of_pem(cert_path.read_text())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate {cert_path}: {exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CertificateRefused(
                f"{key_path} is not the key of {cert_path} (fingerprint {fingerprint}): restore both files from "
                f"the same backup, or run `{NEW_CERT}` to make a new pair (every agent then needs its "
                "fingerprint)") from None
        raise TlsError(f"cannot load {cert_path} / {key_path}: {exc}") from None
    except OSError as exc:
        raise TlsError(f"cannot read the key {key_path}: {exc.strerror or exc}") from None
    return Certificate(cert_path, key_path, fingerprint)


def _gone(data_dir: Path, missing: list[Path], pinned_hosts: int, known: str | None) -> str:
    if len(missing) == 2:
        what = f"{CERT_FILE} and {KEY_FILE} are missing in {data_dir}"
    else:
        there = KEY_FILE if missing[0].name == CERT_FILE else CERT_FILE
        what = f"{missing[0].name} is missing in {data_dir} ({there} is there)"
    if known is None and (data_dir / CERT_FILE).exists():  # recorded by no earlier start, but half the pair is left
        with contextlib.suppress(OSError, ValueError):
            known = fingerprint_of_pem((data_dir / CERT_FILE).read_text())
    old = f"its fingerprint {known}" if known else "it (its fingerprint was not recorded)"
    hosts = "1 host is" if pinned_hosts == 1 else f"{pinned_hosts} hosts are"
    return (f"{what}, and {hosts} pinned to {old}: restore {CERT_FILE} and {KEY_FILE} from a backup, or run "
            f"`{NEW_CERT}` to make a new certificate (every agent then needs its fingerprint)")


@contextlib.contextmanager
def _creation_lock(data_dir: Path) -> Iterator[None]:
    """One process at a time looks for and makes the pair: a server's first start and a `newkey` run at the same
    moment must not each write half of it."""
    with open(data_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
