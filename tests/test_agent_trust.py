"""The agent does not over-trust a server, its environment or its folder (issue 11, items 7 and 8, agent side).

Each rule is tested from both sides: what a user does still works, what an attacker (a compromised or hostile
server, a one-off variable, a planted symlink) tries does not. The end-to-end tests run the real agent against the
real server, or against a hostile server: real TLS, real WebSocket, frames of the test's choosing."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio_websocket

from helpers import AGENT_PATH, add_host, certificate, load_agent, make_settings, wait_for_samples
from mbot import app, tls

agent = load_agent()

BASE_ENV = {"AGENT_SECRET": "s3cret", "AGENT_SERVER_IP": "10.0.0.5"}
FORGED = "\n2026-01-01 00:00:00,000 CRITICAL fake: every host is down"


def no_control_characters(text: str) -> bool:
    return all(c.isprintable() for c in text)


class StubCollector:
    boot_time = 1.0

    def collect(self):
        return {"cpu": 1.0}

    def host_facts(self):
        return {"hostname": "box1", "os": "Linux 6", "platform": "linux", "arch": "x86_64", "cpu_count": 2,
                "boot_time": 1.0, "disks": ["/"], "gpus": []}

    def close(self):
        pass


async def _inline(fn, *args):
    return fn(*args)


def unit_agent(tmp_path: Path, **env: str) -> "agent.Agent":
    cfg = agent.config_from_env({**BASE_ENV, **env}, {})
    cfg = dataclasses.replace(cfg, env_file=str(tmp_path / ".env"))
    a = agent.Agent(cfg, StubCollector())
    a._to_thread = _inline  # deterministic under the autojump clock
    return a


def e2e_config(port: int, secret: str, fingerprint, tmp_path: Path, **overrides) -> "agent.AgentConfig":
    host = tmp_path / "host"
    host.mkdir(exist_ok=True)
    base = agent.AgentConfig(secret=secret, server="127.0.0.1", port=port, interval=0.2, fingerprint=fingerprint,
                             fingerprint_file=str(host / "fp.json"), env_file=str(host / ".env"),
                             backoff_min=0.05, backoff_max=0.2)
    return dataclasses.replace(base, **overrides)


async def start_agent(nursery: trio.Nursery, config) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run():
        with scope:
            await agent.run_agent(config, StubCollector())

    nursery.start_soon(run)
    return scope


class HostileServer:
    """What a compromised mbot server (or anyone holding its key) can do: accept the agent over real TLS, ack its
    hello, then send whatever `script(ws)` sends. Later connections are accepted and held."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0

    async def start(self, nursery: trio.Nursery, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cert = tls.ensure_certificate(folder, ["127.0.0.1"])
        self.fingerprint = cert.fingerprint
        server = await nursery.start(functools.partial(trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0,
                                                       tls.server_context(cert)))
        self.port = server.port

    async def _handle(self, request) -> None:
        ws = await request.accept()
        self.connections += 1
        if self.connections > 1:
            await trio.sleep_forever()
        assert json.loads(await ws.get_message())["type"] == "hello"
        await ws.send_message(json.dumps({"type": "ack", "seq": 0}))
        await self.script(ws)


async def next_result(ws) -> dict:
    """The agent's next `result` (its samples go past meanwhile)."""
    with trio.fail_after(10):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == "result":
                return frame


def command(command_id: str, action: str = "reboot", expires=None) -> str:
    return json.dumps({"type": "command", "id": command_id, "action": action,
                       "expires": time.time() + 30 if expires is None else expires})


# --- a command's expiry ----------------------------------------------------------------------------------------


def test_expiry_rules():
    now = 1_800_000_000.0
    assert agent.command_expiry_problem(now + 30, now) is None  # what the server sends: 30 s
    assert agent.command_expiry_problem(now + 120, now) is None  # clocks a minute and a half apart: still fine
    assert agent.command_expiry_problem(now - 1, now) == "expired"  # never late
    far = agent.command_expiry_problem(now + 86400, now)
    assert far.startswith("refused by the agent") and "86400 s" in far and "120 s" in far and "clock" in far
    for bad in (math.nan, math.inf, -math.inf, True, "soon", None, [now]):
        assert "no valid expiry" in agent.command_expiry_problem(bad, now)


async def test_hostile_server_expiry_tricks_and_a_second_reboot_are_refused(nursery, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="mbot.agent")
    ran = tmp_path / "power.log"
    answers = {}

    async def script(ws):
        # Python's json accepts NaN and Infinity, and NaN compares false with everything: "now > NaN" is False.
        for name, expires in (("day", time.time() + 86400), ("nan", math.nan), ("inf", math.inf),
                              ("past", time.time() - 1)):
            await ws.send_message(command(name, expires=expires))
            answers[name] = await next_result(ws)
        await ws.send_message(command("user"))  # what the real server sends: runs
        answers["user"] = await next_result(ws)
        await ws.send_message(command("again", "shutdown"))  # a minute later, say: refused
        answers["again"] = await next_result(ws)
        await ws.aclose(4003, "done")

    server = HostileServer(script)
    await server.start(nursery, tmp_path / "hostile")
    config = e2e_config(server.port, "s", server.fingerprint, tmp_path, allow_power=True,
                        power_command=f"sh -c 'echo {{action}} >> {ran}'")
    with trio.fail_after(20):
        assert await agent.run_agent(config, StubCollector()) == 1  # 4003: the script is over
    assert all(a["ok"] is False for k, a in answers.items() if k != "user")
    assert "at most 120 s" in answers["day"]["message"]
    assert "no valid expiry" in answers["nan"]["message"] and "no valid expiry" in answers["inf"]["message"]
    assert answers["past"]["message"] == "expired"
    assert answers["user"] == {"type": "result", "id": "user", "ok": True, "message": "reboot started"}
    assert "at most one power action per 10 min" in answers["again"]["message"]
    assert ran.read_text() == "reboot\n"  # one action ran, the one that was in order
    record = json.loads((tmp_path / "host" / agent.POWER_LOG_NAME).read_text())
    assert len(record["power_actions"]) == 1
    assert stat.S_IMODE((tmp_path / "host" / agent.POWER_LOG_NAME).stat().st_mode) == 0o600


# --- power actions: rate limited, and the limit survives the reboots it allows ---------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_power_limiter_gap_and_hourly_cap(tmp_path):
    clock = Clock()
    path = tmp_path / agent.POWER_LOG_NAME
    limits = agent.PowerLimiter(path, clock=clock)
    assert limits.check() is None and limits.record() is None  # the user's reboot
    clock.now += 5 * 60
    refused = limits.check()
    assert "at most one power action per 10 min" in refused and "5 min ago" in refused and "next possible in 5 min" \
        in refused
    for _ in range(2):
        clock.now += 10 * 60
        assert limits.check() is None and limits.record() is None
    clock.now += 10 * 60  # 35 min after the first: a fourth in the hour is one too many
    refused = limits.check()
    assert "at most 3 power actions per hour" in refused and "next possible in 25 min" in refused
    clock.now += 25 * 60 + 1
    assert limits.check() is None

    # The host rebooted: a new process, nothing in memory. The record beside .env still says what happened.
    fresh = agent.PowerLimiter(path, clock=clock)
    assert fresh.record() is None
    clock.now += 60
    assert "per 10 min" in agent.PowerLimiter(path, clock=clock).check()


def test_power_limiter_fails_closed(tmp_path, monkeypatch):
    clock = Clock()
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert "cannot read" in agent.PowerLimiter(garbage, clock=clock).check()  # may hold a minute-old reboot
    (tmp_path / "a-file").write_text("")
    assert "cannot read" in agent.PowerLimiter(tmp_path / "a-file" / "x", clock=clock).check()
    limits = agent.PowerLimiter(tmp_path / agent.POWER_LOG_NAME, clock=clock)
    assert limits.check() is None

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(agent, "_write_private", disk_full)
    assert "cannot record" in limits.record()  # a reboot that nothing would remember: not run
    assert "per 10 min" in limits.check()  # and the attempt counts
    memory = agent.PowerLimiter(None, clock=clock)  # library use: in memory only
    assert memory.record() is None and "per 10 min" in memory.check()


async def test_power_limit_holds_across_agent_restarts_on_the_real_server(server, settings, nursery, tmp_path):
    key = add_host(settings, "box1")
    ran = tmp_path / "power.log"
    config = e2e_config(server.port, key.secret, server.fingerprint, tmp_path, allow_power=True,
                        power_command=f"sh -c 'echo {{action}} >> {ran}'")
    with trio.fail_after(20):
        scope = await start_agent(nursery, config)
        await server.hub.wait_until(key.host_id, connected=True)
        first = await server.hub.run_command(key.host_id, "reboot", 30)
        assert (first.ok, first.message) == (True, "reboot started")
        second = await server.hub.run_command(key.host_id, "reboot", 30)
        assert second.ok is False and "at most one power action per 10 min" in second.message
        # The "reboot": the agent process ends and a new one starts, with nothing in memory.
        scope.cancel()
        await server.hub.wait_until(key.host_id, connected=False)
        scope = await start_agent(nursery, config)
        await server.hub.wait_until(key.host_id, connected=True)
        third = await server.hub.run_command(key.host_id, "shutdown", 30)
        scope.cancel()
    assert third.ok is False and "at most one power action per 10 min" in third.message
    assert ran.read_text() == "reboot\n"


async def test_a_burst_of_refused_commands_costs_a_few_log_lines(nursery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    results = []

    async def script(ws):
        for i in range(50):
            await ws.send_message(command(f"c{i}"))
            results.append(await next_result(ws))
        await ws.aclose(4003, "done")

    server = HostileServer(script)
    await server.start(nursery, tmp_path / "hostile")
    config = e2e_config(server.port, "s", server.fingerprint, tmp_path)  # AGENT_ALLOW_POWER off
    with trio.fail_after(20):
        assert await agent.run_agent(config, StubCollector()) == 1
    assert len(results) == 50 and all(r["ok"] is False and r["message"] == "disabled" for r in results)
    lines = [r.getMessage() for r in caplog.records if "the server asked for" in r.getMessage()]
    assert lines[0] == "the server asked for 'reboot' (command 'c0'): disabled"  # the first in full, at once
    assert len(lines) <= 7  # 1st, 2nd, 4th, 8th, 16th, 32nd within the minute
    assert "more since the previous line, not logged]" in lines[-1]


# --- strings from the server in the agent's log ----------------------------------------------------------------


async def test_server_text_cannot_forge_log_lines(nursery, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="mbot.agent")

    async def script(ws):
        await ws.send_message(json.dumps({"type": "error", "code": "bad_frame", "message": "metrics.cpu: must be a "
                                          "number"}))  # what the real server says: readable as it is
        await ws.send_message(json.dumps({"type": "error", "code": "x\r", "message": "oops" + FORGED}))
        await ws.send_message(command("id" + FORGED[:40], "reboot\x1b[2J"))
        await next_result(ws)
        await ws.send_message("\x1b[2Jnot json" + FORGED)
        await ws.send_message(json.dumps({"type": "ack", "seq": "1" + FORGED}))
        await ws.aclose(4003, "revoked" + FORGED[:60])

    server = HostileServer(script)
    await server.start(nursery, tmp_path / "hostile")
    config = e2e_config(server.port, "s", server.fingerprint, tmp_path)
    with trio.fail_after(20):
        assert await agent.run_agent(config, StubCollector()) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "mbot.agent"]
    assert all(no_control_characters(m) for m in messages), [m for m in messages if not no_control_characters(m)]
    assert any(m == "server error 'bad_frame': 'metrics.cpu: must be a number'" for m in messages)
    forged = [m for m in messages if "CRITICAL fake" in m]
    assert len(forged) >= 4 and all("\\n2026-01-01" in m for m in forged)  # each on its line, escaped
    stop = next(m for m in messages if "revoked this agent's key" in m)
    assert "'revoked\\n2026-01-01" in stop


def test_cli_log_lines_are_one_line_whatever_the_message():
    formatter = agent._OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("trio-websocket", logging.INFO, __file__, 1, "peer said %s", ("hi" + FORGED,), None)
    line = formatter.format(record)
    assert "\n" not in line and line.startswith("INFO peer said hi\\n2026-01-01")
    assert record.getMessage() == "peer said hi" + FORGED  # the record itself is left alone for other handlers


# --- connection failures: summarised ---------------------------------------------------------------------------


async def test_repeated_connection_failures_are_summarised(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    a = unit_agent(tmp_path)
    calls = 0

    async def fake_connect():
        nonlocal calls
        calls += 1
        if calls <= 200:  # a long outage
            raise OSError(111, "Connection refused")
        if calls == 201:  # then a connection that stayed up an hour, and ended
            return agent.Ended(3600.0, 1001, "disconnected from 10.0.0.5:8000: code 1001", logging.INFO)
        if calls == 202:
            raise OSError(111, "Connection refused" + FORGED)
        raise trio_websocket.ConnectionRejected(401, (), None)

    a._connect_and_serve = fake_connect
    started = trio.current_time()
    assert await a.run() == 1
    minutes = (trio.current_time() - started) / 60
    lines = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    outage = lines[:-2]
    # The first failure at once and in full; then 2nd, 4th... 128th, and one per 5 minutes: not 200 lines.
    assert outage[0].startswith("cannot connect to 10.0.0.5:8000: ConnectionRefusedError: [Errno 111] Connection "
                                "refused; retrying in 1.0 s")
    assert 8 <= len(outage) <= 8 + minutes / 5 + 1 and len(outage) < 60
    assert "more since the previous line, not logged]" in outage[-1]
    # A connection that stayed up ends the run: what comes next is logged at once again, on one line.
    assert "code 1001" in lines[-2] and "CRITICAL fake" in lines[-1] and no_control_characters(lines[-1])


async def test_connected_line_says_how_many_failures_it_ends(tmp_path, caplog):
    from test_agent_unit import FakeWebSocket

    caplog.set_level(logging.INFO, logger="mbot.agent")
    a = unit_agent(tmp_path)
    for _ in range(5):
        a._failures.admit(trio.current_time())
    a.add_sample(1_700_000_000.0, {"cpu": 1.0})
    ws = FakeWebSocket()
    async with trio.open_nursery() as nursery:
        conn = agent._Connection(ws, nursery.cancel_scope)
        nursery.start_soon(a._serve, conn)
        await ws.wait_sent(1)
        ws.push({"type": "ack", "seq": 0})
        await ws.wait_sent(2)  # the sample: the connected line came before it
        ws.close_by_server(1000)
    connected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connected to")]
    assert len(connected) == 1 and "after 5 failures in" in connected[0]


# --- .env: only what the user typed ----------------------------------------------------------------------------


class FakeTerminal:
    def isatty(self):
        return True


def run_main(monkeypatch, tmp_path, env: dict, answers: dict | None = None):
    """main() up to the point where it would connect; returns the config it would run with."""
    for name in [k for k in os.environ if k.startswith("AGENT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if answers is not None:
        monkeypatch.setattr(agent.sys, "stdin", FakeTerminal())
        monkeypatch.setattr(agent, "_ask", lambda prompt, secret=False: next(
            v for k, v in answers.items() if k in prompt))
    ran = []

    async def instead_of_running(config):
        ran.append(config)
        return 0

    monkeypatch.setattr(agent, "_run_until_signal", instead_of_running)
    status = agent.main(["--env-file", str(tmp_path / ".env")])
    return status, (ran[0] if ran else None)


def test_environment_values_never_rewrite_env(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nAGENT_SECRET=s3cret\nAGENT_SERVER_IP=10.0.0.5\nAGENT_PORT=8000\n")
    before = env_file.read_bytes()
    # A one-off run with the pin off and another port: used for that run, and nowhere else.
    status, config = run_main(monkeypatch, tmp_path, {"AGENT_VERIFY_SSL": "0", "AGENT_PORT": "9999",
                                                       "AGENT_SECRET": "other"})
    assert status == 0 and (config.verify_ssl, config.port, config.secret) == (False, 9999, "other")
    assert config.env_file == str(env_file)
    assert env_file.read_bytes() == before
    # Nothing typed, no .env: none written.
    other = tmp_path / "fresh"
    other.mkdir()
    status, _ = run_main(monkeypatch, other, BASE_ENV)
    assert status == 0 and not (other / ".env").exists()


def test_typed_values_are_saved_with_the_existing_ones(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    env_file = tmp_path / ".env"
    env_file.write_text("AGENT_INTERVAL=2\n")
    fp = "AB:" * 31 + "AB"
    status, config = run_main(monkeypatch, tmp_path, {"AGENT_VERIFY_SSL": "0", "AGENT_PORT": "9999"},
                              {"address": "box.example", "secret": "typed-secret", "fingerprint": fp})
    assert status == 0 and config.interval == 2.0
    assert agent.read_env_file(env_file) == {"AGENT_INTERVAL": "2", "AGENT_SERVER_IP": "box.example",
                                             "AGENT_SECRET": "typed-secret", "AGENT_FINGERPRINT": "ab" * 32}
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "typed-secret" not in caplog.text and "AGENT_SECRET" in caplog.text


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_first_run_at_a_terminal_saves_typed_settings_not_environment_ones(server, settings, tmp_path):
    """The real agent file, as a user runs it the first time: on a terminal, with a one-off AGENT_PORT and
    AGENT_VERIFY_SSL=0 in the environment. It asks, connects, streams; .env then holds what was typed, only."""
    key = add_host(settings, "box1")
    host = tmp_path / "host"
    host.mkdir()
    master, slave = os.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(host), "AGENT_PORT": str(server.port),
           "AGENT_VERIFY_SSL": "0", "AGENT_INTERVAL": "0.2"}
    # A session of its own: no controlling terminal but the pseudo-terminal it is given (getpass then reads it).
    process = await trio.lowlevel.open_process([sys.executable, str(AGENT_PATH)], stdin=slave, stdout=slave,
                                               stderr=slave, cwd=host, env=env, start_new_session=True)
    os.close(slave)
    terminal = trio.lowlevel.FdStream(master)
    shown = bytearray()

    async def until_shown(text: bytes) -> None:
        while text not in shown:
            try:
                shown.extend(await terminal.receive_some(4096))
            except trio.BrokenResourceError:  # EIO: the agent has gone
                raise AssertionError(f"the agent ended; it showed:\n{shown.decode(errors='replace')}") from None

    async def drain() -> None:  # keep reading, so that its last log lines never block it
        try:
            while await terminal.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass

    try:
        with trio.fail_after(30):
            await until_shown(b"mbot server address")
            await terminal.send_all(b"127.0.0.1\n")
            await until_shown(b"agent secret")
            await terminal.send_all(key.secret.encode() + b"\n")
            await until_shown(b"server fingerprint")
            await terminal.send_all(server.fingerprint.encode() + b"\n")
            await until_shown(b"connected to")
            await wait_for_samples(server, settings, "box1", 2)
    finally:
        process.terminate()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await process.wait()
                nursery.cancel_scope.cancel()
        await terminal.aclose()
    assert process.returncode == 0
    saved = agent.read_env_file(host / ".env")
    assert saved == {"AGENT_SERVER_IP": "127.0.0.1", "AGENT_SECRET": key.secret,
                     "AGENT_FINGERPRINT": server.fingerprint}
    assert stat.S_IMODE((host / ".env").stat().st_mode) == 0o600
    assert key.secret.encode() not in shown  # not echoed, not logged


# --- the pin saved on first use: beside .env when HOME cannot take it, never dropped silently -----------------


@pytest.fixture(params=["unset", "missing", "a file", "read-only"])
def broken_home(request, tmp_path, monkeypatch):
    kind = request.param
    if kind == "unset":
        import pwd

        monkeypatch.delenv("HOME", raising=False)
        monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    elif kind == "missing":
        monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    elif kind == "a file":
        (tmp_path / "home-file").write_text("")
        monkeypatch.setenv("HOME", str(tmp_path / "home-file"))
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs a read-only /proc (tests run as root here: chmod does not stop root)")
        monkeypatch.setenv("HOME", "/proc")
    return kind


def test_pin_saved_beside_env_when_home_cannot_take_it(tmp_path, broken_home, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    first, second = b"the server's certificate", b"a man in the middle's"
    fp = agent.cert_fingerprint(first)
    a = unit_agent(tmp_path)
    assert a._check_pin(first) == fp
    a._save_fingerprint(fp)
    beside = tmp_path / ".env.fingerprint.json"
    assert json.loads(beside.read_text())["fp"] == fp  # the seed's format
    assert stat.S_IMODE(beside.stat().st_mode) == 0o600
    assert f"saved to {beside}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # The next start (a new process): the pin holds, and a changed certificate is refused before anything is sent.
    b = unit_agent(tmp_path)
    assert b._check_pin(first) is None
    with pytest.raises(agent.AgentStop) as info:
        b._check_pin(second)
    assert str(beside) in str(info.value) and "certificate changed" in str(info.value)
    # ... also once HOME works again: both places are read.
    home = tmp_path / "good-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(agent.AgentStop):
        unit_agent(tmp_path)._check_pin(second)


def test_pin_kept_in_home_when_home_works(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    a = unit_agent(tmp_path)
    fp = agent.cert_fingerprint(b"cert")
    a._save_fingerprint(a._check_pin(b"cert"))
    assert json.loads((home / ".bot_fingerprint.json").read_text())["fp"] == fp
    assert not (tmp_path / ".env.fingerprint.json").exists()


def test_pin_that_nothing_can_keep_holds_for_the_run_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    cfg = dataclasses.replace(agent.config_from_env(BASE_ENV, {}), env_file=str(tmp_path / "no-such-dir" / ".env"))
    a = agent.Agent(cfg, StubCollector())
    fp = agent.cert_fingerprint(b"cert")
    a._save_fingerprint(a._check_pin(b"cert"))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "for this run only" in errors[0] and f"AGENT_FINGERPRINT={fp}" in errors[0]
    assert a._check_pin(b"cert") is None
    with pytest.raises(agent.AgentStop):  # never silently unpinned
        a._check_pin(b"another certificate")


async def test_real_agent_with_a_broken_home_pins_beside_env_and_refuses_another_server(
        server, settings, nursery, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    key = add_host(settings, "box1")
    config = e2e_config(server.port, key.secret, None, tmp_path, fingerprint_file=agent.DEFAULT_FINGERPRINT_FILE)
    beside = tmp_path / "host" / ".env.fingerprint.json"
    with trio.fail_after(20):
        scope = await start_agent(nursery, config)
        await wait_for_samples(server, settings, "box1", 1)
        scope.cancel()
    assert json.loads(beside.read_text())["fp"] == server.fingerprint
    assert f"saved to {beside}" in caplog.text

    # Another server answers at the address (a reinstall, or someone in the middle): refused, nothing sent.
    other_settings = make_settings(tmp_path / "other-data")
    other = await nursery.start(lambda task_status: app.serve(other_settings, certificate(other_settings),
                                                              handle_signals=False, task_status=task_status))
    other_key = add_host(other_settings, "box1")
    with trio.fail_after(20):
        status = await agent.run_agent(dataclasses.replace(config, port=other.port, secret=other_key.secret),
                                       StubCollector())
    await other.aclose()
    assert status == 1
    assert f"expected {server.fingerprint} (from {beside}" in caplog.text
    assert "rejected agent connection" not in caplog.text


# --- writes that a planted symlink cannot redirect -------------------------------------------------------------


WRITERS = {
    ".env": lambda path: agent.save_env_file(path, {"AGENT_SECRET": "s3cret"}),
    "pin": lambda path: agent.write_fingerprint_file(path, "ab" * 32),
    "power record": lambda path: agent.PowerLimiter(path).record(),
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_symlink_at_the_temp_path_is_not_written_through(tmp_path, monkeypatch, writer, dangling):
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious\n")
    target = tmp_path / "settings"
    suffixes = iter(["planted", "fresh"])
    monkeypatch.setattr(agent, "_temp_suffix", lambda: next(suffixes))
    planted = tmp_path / ".settings.planted.tmp"
    planted.symlink_to(victim)
    assert WRITERS[writer](target) in (None, True)
    assert (victim.read_text() == "precious\n") if not dangling else not victim.exists()
    assert planted.is_symlink()  # not ours: left alone
    assert target.is_file() and not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not (tmp_path / ".settings.fresh.tmp").exists()  # renamed into place


@pytest.mark.parametrize("writer", WRITERS)
def test_symlink_at_the_target_is_replaced_not_written_through(tmp_path, writer):
    victim = tmp_path / "victim"
    precious = '{"power_actions": []}\n'  # readable by all three (the power record reads before it writes)
    victim.write_text(precious)
    target = tmp_path / "settings"
    target.symlink_to(victim)
    assert WRITERS[writer](target) in (None, True)
    assert victim.read_text() == precious
    assert not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_symlinked_env_through_main(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("# someone else's file\n")
    (tmp_path / ".env").symlink_to(victim)
    status, _ = run_main(monkeypatch, tmp_path, {}, {"address": "10.0.0.5", "secret": "s3cret", "fingerprint": ""})
    assert status == 0 and victim.read_text() == "# someone else's file\n"
    assert not (tmp_path / ".env").is_symlink()
    assert agent.read_env_file(tmp_path / ".env") == BASE_ENV


def test_writes_work_without_o_nofollow(tmp_path, monkeypatch):
    # Windows has no O_NOFOLLOW: the writer must not need it (O_EXCL still refuses a planted name).
    monkeypatch.delattr(os, "O_NOFOLLOW", raising=False)
    path = tmp_path / ".env"
    assert agent.save_env_file(path, BASE_ENV) is True
    assert agent.read_env_file(path) == BASE_ENV
    suffixes = iter(["planted", "fresh"])
    monkeypatch.setattr(agent, "_temp_suffix", lambda: next(suffixes))
    (tmp_path / ".fp.planted.tmp").symlink_to(tmp_path / "victim")
    agent.write_fingerprint_file(tmp_path / "fp", "ab" * 32)
    assert not (tmp_path / "victim").exists()
