"""Containers end to end with real parts: a real Podman service on a temp socket, a real container, the real agent
over real TLS to the real server, alerts through the fake Bot API.

Slow (containers start and stop: about 10 s) and needs podman: run by `make container-test` (a CI step of its own,
after deploy/podman-setup.sh), skipped in the default suite unless MBOT_TEST_PODMAN=1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import subprocess

import pytest
import trio

from fakebot import FakeBot
from helpers import certificate, load_agent, read_db
from mbot import app
from mbot.telegram.outbox import Outbox, RateLimiter
from test_bot import ALICE, fake, say  # noqa: F401  (fake: the fake Bot API fixture)

pytestmark = pytest.mark.skipif(os.environ.get("MBOT_TEST_PODMAN") != "1",
                                reason="needs podman: run `make container-test` (sets MBOT_TEST_PODMAN=1)")

BASE = os.environ.get("MBOT_IMAGE_BASE") or "localhost/debian-py:bookworm"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def engine(tmp_path):
    """`podman system service` on a socket of our own, socket-activated: the socket listens before podman starts,
    so the first request simply waits for it (no polling for readiness)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (deploy/podman-setup.sh installs it)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        pytest.skip(f"base image {BASE} missing: `. deploy/podman-setup.sh` makes it")
    path = str(tmp_path / "podman.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    fd = listener.fileno()
    with open(tmp_path / "podman-service.log", "wb") as log:  # read it when the test fails
        service = subprocess.Popen(
            ["bash", "-c", f"exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec podman system service --time=0"],
            pass_fds=(fd,), stdout=log, stderr=log)
    listener.close()
    name = "mbot-test-" + secrets.token_hex(4)
    try:
        podman("run", "-d", "--name", name, BASE, "sleep", "infinity")
        yield path, name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


async def test_real_container_reported_alerted_and_resolved(engine, fake: FakeBot, nursery, settings, tmp_path):
    path, name = engine
    agent = load_agent()
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url, allowed_users=(ALICE,))
    server = await nursery.start(lambda task_status: app.serve(
        settings, certificate(settings), handle_signals=False, outbox=outbox, task_status=task_status))
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.5,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                               container_socket=path, containers_every=60.0)
    # Stats every 60 s: the stop and the start below reach the server within the waits only through Podman's event
    # stream (the list is read again on its events).
    alert = lambda text: lambda c: (c.method == "sendMessage" and c.params["chat_id"] == ALICE  # noqa: E731
                                    and text in c.params["text"])

    async def reported(state: str) -> None:
        """Until the latest snapshot and the latest sample both have the container (woken by commits)."""
        with trio.fail_after(30):
            while True:
                rows = read_db(settings, "SELECT items FROM snapshots WHERE kind = 'containers'")
                metrics = json.loads(read_db(settings, "SELECT last_metrics FROM hosts")[0][0] or "{}")
                if (rows and any(i["name"] == name and i["state"] == state for i in json.loads(rows[0][0]))
                        and name in metrics.get("containers", {})):
                    return
                await server.writer.next_commit()

    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        await reported("running")
        listing = await say(fake, ALICE, "/containers box1")
        assert f"🟢 <b>{name}</b> · {BASE}" in listing["text"]
        assert f"Alert set on <b>box1</b>: container:{name} down" in (
            await say(fake, ALICE, f"/setalert box1 container:{name} down"))["text"]
        card = await say(fake, ALICE, "/status box1")
        assert any(b["text"] == "🐳 Containers" for row in card["reply_markup"]["inline_keyboard"] for b in row)

        await trio.to_thread.run_sync(podman, "stop", "-t", "0", name)
        down = await fake.wait_for(alert(f"box1: container {name} is down: not running"), timeout=30)
        assert down.params["reply_markup"]["inline_keyboard"][0][0]["text"] == "🐳 Containers"
        await trio.to_thread.run_sync(podman, "start", name)
        await fake.wait_for(alert(f"box1: container {name} is up again after"), timeout=30)
        agents.cancel_scope.cancel()
    # One message each way, however many samples said so.
    assert len([c for c in fake.calls("sendMessage") if f"container {name} is down" in c.params["text"]]) == 1
    # Its history: the series alerts watched, and its memory, read from its cgroup in every poll.
    layouts = [names for (names,) in read_db(settings, "SELECT names FROM layouts")]
    assert any(f'"container_down:{name}"' in names for names in layouts)
    assert any(f'"container_mem:{name}"' in names for names in layouts)
    await server.aclose()


def test_the_agent_reads_a_real_containers_cgroup_as_the_engine_does(engine):
    """What the agent reads from the cgroup of a container Podman runs is what Podman's stats say (memory within a
    fifth: they are read a moment apart), so every container can be measured every poll without a stats request."""
    path, name = engine
    agent = load_agent()
    inspect = agent.engine_get(path, f"/containers/{name}/json", 1 << 20)
    cid, pid = inspect["Id"], inspect["State"]["Pid"]
    reader = agent.host_cgroups()
    assert reader is not None
    try:
        got = reader.read(cid, pid)
        assert got is not None, f"no cgroup found for pid {pid}: {open(f'/proc/{pid}/cgroup').read()}"
        (used_ns, _), mem = got
        _, engine_mem = agent.stats_reading(agent.engine_get(
            path, f"/containers/{cid}/stats?stream=false&one-shot=true", 1 << 20))
        assert used_ns > 0 and engine_mem is not None and abs(mem - engine_mem) <= max(engine_mem // 5, 1 << 20)
        # Another container's pid is never taken for this one.
        assert reader.read("0" * 64, pid) is None
    finally:
        reader.close()
