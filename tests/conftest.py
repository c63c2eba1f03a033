"""Shared fixtures: a real server (real TLS on 127.0.0.1, port 0, a real sqlite file in tmp_path)."""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import AsyncIterator, Iterator

# Set up before anything below imports mbot: where the tests' files go, and where compiled code is cached.

# tmp_path (and the processes the tests start) on the RAM disk where there is one, unless TMPDIR says otherwise: most
# tests make a sqlite file of their own, whose schema is a committed transaction per migration, and on this
# machine's disk those fsyncs were most of a small test's time (a new database: about 75 ms on /tmp, 19 ms on
# /dev/shm). Nothing a test checks depends on the medium; the disk-full tests mount a tmpfs of their own anyway.
if "TMPDIR" not in os.environ and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again (pytest's own start may have asked it already)


def _private_pycache() -> str | None:
    """A directory of this user's for compiled modules, or None if one cannot be had safely."""
    path = os.path.join(tempfile.gettempdir(), f"mbot-test-pycache-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # someone else's: code is never loaded from there
    return path


# Where the environment asks for no .pyc files beside the sources (PYTHONDONTWRITEBYTECODE), every `python -m mbot`
# and agent a test starts compiled mbot again, and every run rewrote and compiled all test modules (pytest's assert
# rewriting is cached as .pyc too): about 6 s of CPU per run here. A private PYTHONPYCACHEPREFIX leaves the source
# tree as clean as asked and lets this run's processes, and the next run, reuse the compiled code.
if sys.dont_write_bytecode and not sys.pycache_prefix and (_pycache := _private_pycache()):
    sys.pycache_prefix, sys.dont_write_bytecode = _pycache, False
    os.environ["PYTHONPYCACHEPREFIX"] = _pycache
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402 (after the set-up above)
import trio  # noqa: E402

from helpers import certificate, make_settings, open_tls, upgrade  # noqa: E402
from mbot import app  # noqa: E402
from mbot.config import Settings  # noqa: E402

# Servers the tests start as processes (`python -m mbot`) inherit this: they watch the test machine only where a test
# asks (tests/test_selfwatch.py), instead of each running an agent of its own.
os.environ["MBOT_WATCH_SELF"] = "0"


@pytest.fixture(autouse=True, scope="session")
def _no_real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test (or a process it starts) that forgets MBOT_DATA_DIR lands here, never in the real default
    (~/.local/share/mbot, /var/lib/mbot for root). Tests of the default pass their own environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MBOT_DATA_DIR", str(tmp_path_factory.mktemp("forgotten-data-dir")))
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def server(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[app.Server]:
    running: app.Server = await nursery.start(
        lambda task_status: app.serve(settings, certificate(settings), handle_signals=False, task_status=task_status))
    yield running
    await running.aclose()




@pytest.fixture
async def connect(server: app.Server, nursery: trio.Nursery):
    """Open bare WebSocket clients to `server`; all are closed at teardown (no leaked sockets)."""
    opened = []

    async def _connect(secret: str | None):
        stream = await open_tls(server.port)
        opened.append(stream)
        return await upgrade(nursery, stream, secret)

    yield _connect
    # trio-websocket leaves the stream open when the server closed the connection: close it here.
    for stream in opened:
        await trio.aclose_forcefully(stream)
