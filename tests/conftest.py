"""Shared fixtures: a real server (real TLS on 127.0.0.1, port 0, a real sqlite file in tmp_path)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import trio

from helpers import make_settings, open_tls, server_certificate, upgrade
from mbot import app
from mbot.agents import AgentHub
from mbot.config import Settings
from mbot.session import AckPolicy

# Servers the tests start as processes (`python -m mbot`) inherit this: they watch the test machine only where a test
# asks (tests/test_selfwatch.py), instead of each running an agent of its own.
os.environ["MBOT_WATCH_SELF"] = "0"

# tmp_path (and the processes the tests start) on the RAM disk where there is one, unless TMPDIR says otherwise: most
# tests make a sqlite file of their own, whose schema is a committed transaction per migration, and on this
# machine's disk those fsyncs were most of a small test's time (a new database: about 75 ms on /tmp, 19 ms on
# /dev/shm). Nothing a test checks depends on the medium; the disk-full tests mount a tmpfs of their own anyway.
if "TMPDIR" not in os.environ and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again (pytest's own start may have asked it already)


@pytest.fixture(autouse=True, scope="session")
def _no_real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test (or a process it starts) that forgets MBOT_DATA_DIR lands here, never in the real default
    (~/.local/share/mbot, /var/lib/mbot for root). Tests of the default pass their own environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MBOT_DATA_DIR", str(tmp_path_factory.mktemp("forgotten-data-dir")))
        yield


@pytest.fixture(autouse=True)
def _acks_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers in this process ack each sample when it is committed, as they did before acks were paced per
    agent interval (AckPolicy.samples): tests that wait for acks need not wait three intervals. The tests of that
    pacing (test_session.py, test_ack_pacing.py) give the hub their own policy."""
    monkeypatch.setattr(AgentHub, "ack_policy", AckPolicy(samples=0.0))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def server(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[app.Server]:
    running: app.Server = await nursery.start(
        lambda task_status: app.serve(settings, server_certificate(settings), handle_signals=False,
                                      task_status=task_status))
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
