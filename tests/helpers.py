"""Helpers shared by the tests: settings, hosts, a bare WebSocket client, frames."""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio
import trio_websocket

from mbot import app, service, store, tls
from mbot.config import Settings, load_settings, prepare_data_dir

ROOT = Path(__file__).resolve().parent.parent
AGENT_PATH = ROOT / "agent" / "mbot_agent.py"


def load_agent():
    """The agent is one file, not a package: load it by path (registered in sys.modules, as dataclasses need)."""
    import importlib.util
    import sys

    name = "mbot_agent"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, AGENT_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


async def wait_for_samples(server, settings: Settings, name: str, count: int) -> None:
    """Until host `name` has `count` samples committed: woken by each commit, never by polling."""
    with trio.fail_after(30):
        while True:
            rows = read_db(settings, "SELECT samples_count FROM hosts WHERE name = ?", name)
            if rows and rows[0][0] >= count:
                return
            await server.writer.next_commit()


async def start_agent_object(nursery: trio.Nursery, runner: Any) -> trio.CancelScope:
    """Run an agent object (mbot_agent.Agent) in `nursery` until the returned scope is cancelled; the test looks
    into it meanwhile (its link, its spool)."""
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await runner.run()

    nursery.start_soon(run)
    return scope


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    settings = load_settings({"MBOT_DATA_DIR": str(data_dir), "PORT": "0", "MBOT_HOST": "127.0.0.1",
                              "MBOT_PUBLIC_HOST": "127.0.0.1",
                              "MBOT_WATCH_SELF": "0",  # a test server watches itself only where a test asks
                              # each alert at once: tests of folded storms set their own wait
                              "MBOT_ALERT_GROUP_WAIT": "0"})
    settings = dataclasses.replace(settings, **overrides)
    prepare_data_dir(settings)
    return settings


def certificate(settings: Settings) -> tls.Certificate:
    return tls.ensure_certificate(settings.data_dir, ["127.0.0.1", "localhost"])


_shared_pair: Path | None = None


def server_certificate(settings: Settings) -> tls.Certificate:
    """certificate() for a test server whose certificate is not the point: a data directory without one gets a copy
    of a pair made once per run (made as the server makes its own), instead of an openssl run of its own (15-20 ms,
    at each of a hundred-odd servers). Tests of certificates, or of two servers told apart by theirs, use
    certificate(). The copy is the test's own: a test that replaces it changes no other test's."""
    global _shared_pair
    if _shared_pair is None:
        folder = Path(tempfile.mkdtemp(prefix="mbot-test-pair-"))
        atexit.register(shutil.rmtree, folder, True)
        tls.ensure_certificate(folder, ["127.0.0.1", "localhost"])
        _shared_pair = folder
    data = settings.data_dir
    if not (data / tls.CERT_FILE).exists() and not (data / tls.KEY_FILE).exists():
        shutil.copy2(_shared_pair / tls.KEY_FILE, data / tls.KEY_FILE)  # 0600, as made
        shutil.copy2(_shared_pair / tls.CERT_FILE, data / tls.CERT_FILE)
    return certificate(settings)


def add_host(settings: Settings, name: str, owner: int = 0, created: float | None = None) -> service.NewKey:
    conn = store.connect(settings.db_path)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            return service.new_key(conn, name, owner, now=created)
    finally:
        conn.close()


def read_db(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = store.connect(settings.db_path, readonly=True)
    try:
        return [tuple(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def pinned_context() -> ssl.SSLContext:
    # Not ssl.create_default_context(): the same settings, plus loading the system's CA bundle (50-90 ms here, at
    # every connection a test opens), which a context that verifies nothing never reads.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_tls(port: int) -> trio.SSLStream[trio.SocketStream]:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=pinned_context(),
                                                 https_compatible=True)
    await stream.do_handshake()
    return stream


async def upgrade(nursery: trio.Nursery, stream: trio.SSLStream[trio.SocketStream],
                  secret: str | None) -> trio_websocket.WebSocketConnection:
    headers = [(b"Authorization", f"Bearer {secret}".encode())] if secret is not None else []
    return await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/agent", extra_headers=headers)


async def open_raw_ws(nursery: trio.Nursery, port: int, secret: str | None) -> trio_websocket.WebSocketConnection:
    """A bare WebSocket client (no agent code): the tool for sending the server frames an agent never would."""
    return await upgrade(nursery, await open_tls(port), secret)


def hello_frame(epoch: int = 1, **extra: Any) -> str:
    return json.dumps({"type": "hello", "v": 1, "agent": "test", "epoch": epoch, "hostname": "h", "os": "TestOS",
                       "interval": 1.0, **extra})


# Recent enough for the server's window (it stores samples up to a week old), whole seconds for readable asserts.
BASE_TS = float(int(time.time()) - 3600)


def sample_frame(seq: int, cpu: float = 10.0, ts: float | None = None) -> str:
    return json.dumps({"type": "sample", "seq": seq, "ts": ts or BASE_TS + seq,
                       "metrics": {"cpu": cpu, "ram": {"used": 1.0, "total": 4.0}}})


async def receive_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        return json.loads(await ws.get_message())


async def ack_reaching(ws: trio_websocket.WebSocketConnection, seq: int) -> dict[str, Any]:
    """Acks are coalesced: wait until one covers `seq`."""
    while True:
        frame = await receive_json(ws)
        if frame["type"] == "ack" and frame["seq"] >= seq:
            return frame


async def rejection_status(port: int, secret: str | None) -> int | None:
    """The HTTP status the server answers an upgrade with, or None when it accepts.

    trio-websocket raises ConnectionRejected from the reader task into the caller's nursery as well as from
    wrap_client_stream, hence the private nursery and except*.
    """
    status: int | None = None
    stream = await open_tls(port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await upgrade(nursery, stream, secret)
            await ws.aclose()
    except* trio_websocket.ConnectionRejected as group:
        status = group.exceptions[0].status_code
    finally:
        await trio.aclose_forcefully(stream)
    return status
