"""Backups of a server's whole state (the database, the certificate and its key) and their restore.

One archive (tar + gzip, mode 0600) holds a consistent copy of the database made with SQLite's online backup API,
which reads one snapshot while the server goes on committing (WAL), plus cert.pem, key.pem and a small manifest.
A restore checks everything before it touches the data directory: only those members, regular files, bounded
sizes, a database that passes quick_check and is not from a newer mbot, a key that belongs to the certificate;
then the current files are moved aside (never deleted) and the restored ones take their place.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from . import store, tls
from .metrics import BackupStats

log = logging.getLogger(__name__)

DB_MEMBER, CERT_MEMBER, KEY_MEMBER, MANIFEST = "mbot.sqlite3", tls.CERT_FILE, tls.KEY_FILE, "manifest.json"
MEMBERS = (MANIFEST, DB_MEMBER, CERT_MEMBER, KEY_MEMBER)
PREFIX, SUFFIX = "mbot-backup-", ".tar.gz"
MAX_SMALL = 1 << 20  # manifest, certificate, key: far smaller than this in any real archive
MAX_DB = 1 << 40  # the database: bounded only against archives that claim absurd sizes
# gzip's fastest level: on a database of float32 samples it makes an archive 2 % larger than level 9 for a third
# of the CPU (bench/backup.py: 100 hosts x 7 days, 1.3 GiB), and that CPU is taken from the server meanwhile.
COMPRESS_LEVEL = 1


class BackupError(Exception):
    """A backup that could not be made or an archive that cannot be restored; the message is for the user."""


class BackupStopped(BackupError):
    """The backup was asked to stop (the server is stopping): nothing of it is left behind."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int  # bytes of the archive
    members: tuple[tuple[str, int], ...]  # (name, bytes) as stored
    schema: int
    hosts: int
    samples: int
    fingerprint: str | None

    def describe(self) -> str:
        held = ", ".join(f"{name} ({_size(size)})" for name, size in self.members if name != MANIFEST)
        return (f"{self.path}: {_size(self.size)}; {held}; schema v{self.schema}, {self.hosts} hosts, "
                f"{self.samples} raw samples, certificate {self.fingerprint or '?'}")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def default_name(now: float) -> str:
    return PREFIX + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + SUFFIX


def write_backup(data_dir: Path, out: Path, now: float, *, stop: Callable[[], bool] = lambda: False) -> Backup:
    """Write the archive to `out` (replacing it only once complete). Works while a server runs on data_dir.
    `stop` is asked between chunks of the archive: when it says so, BackupStopped, and nothing is left behind."""
    db_path = data_dir / DB_MEMBER
    if not db_path.exists():
        raise BackupError(f"{data_dir} holds no database ({DB_MEMBER}): nothing to back up")
    out = out.absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mbot-backup-") as tmp:
            copy = Path(tmp) / DB_MEMBER
            _copy_database(db_path, copy)
            if stop():
                raise BackupStopped("backup stopped")
            conn = sqlite3.connect(copy)
            try:
                schema, hosts, samples = store.contents(conn)
                fingerprint = store.get_kv(conn, tls.FINGERPRINT_KEY)
            finally:
                conn.close()
            manifest = json.dumps({"mbot": mbot_version(), "schema": schema, "made": now, "hosts": hosts,
                                   "fingerprint": fingerprint}).encode()
            part = Path(tmp) / "archive"
            members: list[tuple[str, int]] = []
            with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as raw, \
                    tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
                _add_bytes(tar, MANIFEST, manifest, now)
                members.append((MANIFEST, len(manifest)))
                for name, path in ((DB_MEMBER, copy), (CERT_MEMBER, data_dir / CERT_MEMBER),
                                   (KEY_MEMBER, data_dir / KEY_MEMBER)):
                    if not path.exists():
                        raise BackupError(f"{path} is missing: the backup would not restore a working server")
                    _add_file(tar, name, path, now, stop)
                    members.append((name, path.stat().st_size))
            os.replace(part, out)
    except OSError as exc:
        raise BackupError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Backup(out, out.stat().st_size, tuple(members), schema, hosts, samples, fingerprint)


def _copy_database(source: Path, target: Path) -> None:
    """SQLite's online backup, all pages in one step: one read transaction, so one consistent snapshot, and in WAL
    mode the server's writer is never blocked by it. (In several steps it would start over after each commit of
    the server's, which comes several times a second.) The copy is scratch until it is in the archive: no journal
    and no fsync of its gigabyte, which would only compete with the server's own writes."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        store.scratch(dst)
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, now: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(now)
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path, now: float, stop: Callable[[], bool]) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = path.stat().st_size, 0o600, int(now)
    with open(path, "rb") as handle:
        tar.addfile(info, _Stoppable(handle, stop))


class _Stoppable:
    """A file that tarfile reads in chunks (16 KiB), asking `stop` before each: a gigabyte's compression takes a
    minute, and a server that is told to stop must not wait for it."""

    def __init__(self, handle: io.BufferedReader, stop: Callable[[], bool]) -> None:
        self._handle, self._stop = handle, stop

    def read(self, size: int = -1) -> bytes:
        if self._stop():
            raise BackupStopped("backup stopped")
        return self._handle.read(size)


def mbot_version() -> str:
    try:
        from importlib.metadata import version

        return version("mbot")
    except Exception:  # not installed (a copied tree): the manifest says so rather than failing the backup
        return "unknown"


# --- restore -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    schema: int
    hosts: int
    fingerprint: str
    moved_aside: Path | None  # where the files it replaced went


def restore(archive: Path, data_dir: Path, now: float) -> Restored:
    """Check the archive in a scratch directory beside the data, then swap it in. The caller makes sure no server
    runs on data_dir (the server lock)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".restore-") as tmp:
        scratch = Path(tmp)
        _extract(archive, scratch)
        db = scratch / DB_MEMBER
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                if not store.intact(conn):
                    raise BackupError(f"{archive}: the database in it is damaged (quick_check failed)")
                schema, hosts, _ = store.contents(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{archive}: the database in it cannot be read ({exc})") from None
        if schema > store.SCHEMA_VERSION:
            raise BackupError(f"{archive} was made by a newer mbot (schema v{schema}; this one knows up to "
                              f"v{store.SCHEMA_VERSION}): restore it with that version")
        try:
            cert = tls.load_certificate(scratch)
        except tls.TlsError as exc:
            raise BackupError(f"{archive}: {exc}") from None
        moved = _move_aside(data_dir, now)
        for name in (DB_MEMBER, CERT_MEMBER, KEY_MEMBER):
            os.replace(scratch / name, data_dir / name)
    return Restored(schema, hosts, cert.fingerprint, moved)


def _extract(archive: Path, into: Path) -> None:
    """Exactly the expected members, as regular files, within their sizes; nothing else is written anywhere."""
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                if member.name not in MEMBERS or member.name in seen or not member.isreg():
                    raise BackupError(f"{archive} is not an mbot backup: unexpected member {member.name[:80]!r}")
                limit = MAX_DB if member.name == DB_MEMBER else MAX_SMALL
                if member.size > limit:
                    raise BackupError(f"{archive}: {member.name} is larger than an mbot backup holds")
                seen.add(member.name)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with open(os.open(into / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{archive} cannot be read as an mbot backup ({exc})") from None
    missing = [name for name in MEMBERS if name not in seen]
    if missing:
        raise BackupError(f"{archive} is not a complete mbot backup: {', '.join(missing)} missing")


def _move_aside(data_dir: Path, now: float) -> Path | None:
    """The files a restore replaces go to a folder of their own in the data directory, never away."""
    present = [data_dir / name for name in (DB_MEMBER, DB_MEMBER + "-wal", DB_MEMBER + "-shm", CERT_MEMBER, KEY_MEMBER)
               if (data_dir / name).exists()]
    if not present:
        return None
    aside = data_dir / f"before-restore-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
    aside.mkdir(mode=0o700, exist_ok=True)
    for path in present:
        os.replace(path, aside / path.name)
    return aside


# --- the server's own backups (MBOT_BACKUP_DIR) ------------------------------------------------------------------


def kept(directory: Path) -> list[Path]:
    """The server's backups in `directory`, oldest first (by the time in their names)."""
    return sorted(p for p in directory.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


def to_delete(backups: list[Path], keep: int) -> list[Path]:
    return backups[:-keep] if len(backups) > keep else []


def next_due(last: float | None, now: float, every: float) -> float:
    """When the next backup is due: `every` after the last one, at once when there is none or it is overdue."""
    if last is None:
        return now
    return max(now, last + every)


async def _stoppable_backup(data_dir: Path, out: Path, now: float) -> Backup:
    """write_backup in a worker thread that a cancellation stops within a chunk (or the database copy, seconds),
    its scratch files removed, rather than the server's shutdown waiting for the whole archive, or a stop that
    cannot wait (docker stop: SIGKILL after 10 s) leaving a gigabyte of them in the backup directory."""
    stop = threading.Event()

    def run() -> tuple[Backup | None, Exception | None]:
        try:
            return write_backup(data_dir, out, now, stop=stop.is_set), None
        except Exception as exc:  # handed to the trio side as it is, not wrapped in the nursery's group
            return None, exc

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_when_cancelled)
        made, error = await trio.to_thread.run_sync(run)
        nursery.cancel_scope.cancel()
    # (Cancelled from outside: the nursery raised it above, once the thread had stopped and cleaned up.)
    if error is not None:
        raise error
    assert made is not None
    return made


async def keep_backups(data_dir: Path, directory: Path, every: float, keep: int, stats: BackupStats, *,
                       clock: Callable[[], float] = time.time, attempted: Callable[[], None] = lambda: None) -> None:
    """The server's own backups, until cancelled: one every `every` (the first at once when the newest in
    `directory` is older than that), the newest `keep` kept. A failure is one warning and a count in /metrics,
    and the next attempt comes after `every` again: never a crash, never a retry storm."""
    existing = await trio.to_thread.run_sync(lambda: kept(directory) if directory.is_dir() else [])
    last = existing[-1].stat().st_mtime if existing else None
    while True:
        due = next_due(last, clock(), every)
        await trio.sleep(max(0.0, due - clock()))
        now = clock()
        try:
            made = await _stoppable_backup(data_dir, directory / default_name(now), now)
            for old in to_delete(await trio.to_thread.run_sync(kept, directory), keep):
                await trio.to_thread.run_sync(old.unlink)
        except (BackupError, OSError) as exc:
            stats.failures += 1
            log.warning("backup failed: %s; the next attempt in %s s", exc, f"{every:g}")
        else:
            stats.made += 1
            stats.last_success = now
            log.info("backup written: %s", made.describe())
        last = now
        attempted()  # (tests move their clock on from here: never while a backup is being written)
