"""The server watches its own machine: the real agent as a child process, over loopback TLS (mbot/selfwatch.py)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import psutil
import pytest
import trio

from mbot import app, selfwatch, service, store
from mbot.config import ConfigError, load_settings

from helpers import add_host, certificate, make_settings, read_db, wait_for_samples

AGENT = Path("/some/agent.py")


# --- the decision -----------------------------------------------------------------------------------------------


def test_plan_follows_the_setting_and_where_mbot_runs() -> None:
    assert selfwatch.plan(None, container=False, host_proc=False, agent=AGENT, psutil=True).watch
    assert selfwatch.plan(True, container=False, host_proc=False, agent=AGENT, psutil=True).watch
    off = selfwatch.plan(False, container=False, host_proc=False, agent=AGENT, psutil=True)
    assert not off.watch and "MBOT_WATCH_SELF=0" in off.why


def test_inside_a_container_it_is_off_unless_the_hosts_proc_is_mounted() -> None:
    boxed = selfwatch.plan(None, container=True, host_proc=False, agent=AGENT, psutil=True)
    assert not boxed.watch and "/host/proc" in boxed.why and "MBOT_WATCH_SELF=1" in boxed.why
    mounted = selfwatch.plan(None, container=True, host_proc=True, agent=AGENT, psutil=True)
    assert mounted.watch and mounted.host_proc == Path("/host/proc")
    asked = selfwatch.plan(True, container=True, host_proc=False, agent=AGENT, psutil=True)
    assert asked.watch and asked.host_proc is None  # the user asked to watch the container itself


def test_without_the_agent_or_psutil_it_says_why() -> None:
    assert "agent/mbot_agent.py" in selfwatch.plan(None, container=False, host_proc=False, agent=None,
                                                   psutil=True).why
    no_psutil = selfwatch.plan(True, container=False, host_proc=False, agent=AGENT, psutil=False)
    assert not no_psutil.watch and "psutil" in no_psutil.why


def test_the_setting_is_read_strictly() -> None:
    assert load_settings({"MBOT_WATCH_SELF": "0"}).watch_self is False
    assert load_settings({"MBOT_WATCH_SELF": "1"}).watch_self is True
    assert load_settings({}).watch_self is None
    with pytest.raises(ConfigError, match="MBOT_WATCH_SELF"):
        load_settings({"MBOT_WATCH_SELF": "maybe"})


@pytest.mark.parametrize("hostname, name", [("box1", "box1"), ("web 01.lan", "web-01"), ("ü", "mbot-server"),
                                            ("x" * 40 + ".example.org", "x" * 32)])
def test_the_host_is_named_after_the_machine(hostname: str, name: str) -> None:
    assert selfwatch.machine_name(hostname) == name
    service.check_name(selfwatch.machine_name(hostname))


def test_the_child_gets_only_what_it_needs() -> None:
    env = selfwatch.agent_environment({"PATH": "/bin", "AGENT_SECRET": "operator's", "MBOT_DATA_DIR": "/x",
                                       "AGENT_VERIFY_SSL": "0"}, address="127.0.0.1", port=8443, secret="s",
                                      fingerprint="ab" * 32, interval=None, host_proc=None)
    assert env["AGENT_SECRET"] == "s" and env["AGENT_PORT"] == "8443" and env["PATH"] == "/bin"
    assert "AGENT_VERIFY_SSL" not in env and "MBOT_DATA_DIR" not in env  # pinned, and nothing of the server's
    assert selfwatch.agent_address("0.0.0.0") == "127.0.0.1" and selfwatch.agent_address("::") == "::1"
    assert selfwatch.agent_address("10.0.0.5") == "10.0.0.5"


def test_agent_log_lines_keep_their_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mbot.selfwatch"):
        selfwatch.forward("2026-12-01 10:00:00,000 WARNING disk is slow\n")
        selfwatch.forward("a line of its own\n")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "own agent: disk is slow"), (logging.INFO, "own agent: a line of its own")]


# --- the host, in the store -------------------------------------------------------------------------------------


def _prepare(settings, hostname="box", allowed=(42,), now=1000.0):
    conn = store.connect(settings.db_path)
    try:
        with store.transaction(conn):
            return selfwatch.prepare(conn, hostname, allowed, now)
    finally:
        conn.close()


def test_one_host_for_the_machine_owned_by_the_admin_with_a_new_secret_each_start(settings) -> None:
    first = _prepare(settings)
    assert isinstance(first, selfwatch.Ready) and first.host.name == "box" and first.host.owner == 42
    again = _prepare(settings)
    assert isinstance(again, selfwatch.Ready) and again.host.id == first.host.id and again.secret != first.secret
    hashes = read_db(settings, "SELECT secret_hash FROM hosts")
    assert hashes == [(service.secret_hash(again.secret),)]  # the previous run's secret is dead


def test_a_name_the_admin_already_uses_is_not_taken_over(settings) -> None:
    add_host(settings, "box", owner=42)
    ready = _prepare(settings)
    assert isinstance(ready, selfwatch.Ready) and ready.host.name == "box-server"


def test_a_removed_or_revoked_host_is_not_brought_back(settings) -> None:
    ready = _prepare(settings)
    conn = store.connect(settings.db_path)
    with store.transaction(conn):
        service.revoke(conn, 42, ready.host.id, wipe=False)
    assert "revoked" in _prepare(settings)
    with store.transaction(conn):
        service.revoke(conn, 42, ready.host.id, wipe=True)
    conn.close()
    assert "deleted" in _prepare(settings)
    assert read_db(settings, "SELECT count(*) FROM hosts") == [(0,)]


def test_the_admin_who_claims_the_bot_later_gets_the_host(settings) -> None:
    ready = _prepare(settings, allowed=None)
    assert ready.host.owner == 0
    conn = store.connect(settings.db_path)
    with store.transaction(conn):
        selfwatch.adopt(conn, 7)
    conn.close()
    assert read_db(settings, "SELECT owner, name FROM hosts") == [(7, "box")]


# --- the real agent against the real server ---------------------------------------------------------------------


def _agents() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "mbot_agent.py" in " ".join(p.cmdline())]


@dataclasses.dataclass
class QuickSelfWatch(selfwatch.SelfWatch):
    """The server's own agent at a 0.2 s interval (AGENT_INTERVAL, the field's purpose): its first sample comes
    after that instead of the default interval's first second, at each of the test's two starts."""
    interval: float | None = 0.2


async def test_the_server_watches_itself_from_the_first_minute_and_stops_its_agent(tmp_path, nursery,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(selfwatch, "SelfWatch", QuickSelfWatch)
    settings = make_settings(tmp_path / "data", watch_self=True, allowed_users=(42,))
    cert = certificate(settings)

    async def start():
        return await nursery.start(lambda task_status: app.serve(settings, cert, handle_signals=False,
                                                                 task_status=task_status))

    server = await start()
    name = selfwatch.machine_name(__import__("socket").gethostname())
    await wait_for_samples(server, settings, name, 1)
    [(host_id, owner, facts)] = read_db(settings, "SELECT id, owner, facts FROM hosts")
    assert owner == 42 and '"cpu_count"' in facts  # a real agent's hello, with the machine's facts
    assert len(_agents()) == 1
    await server.aclose()
    assert _agents() == []  # stopped with the server, not left behind

    server = await start()  # the next start watches as the same host
    await wait_for_samples(server, settings, name, 2)
    assert read_db(settings, "SELECT id FROM hosts") == [(host_id,)]
    await server.aclose()


async def test_off_means_no_host_and_no_child(tmp_path, nursery, caplog) -> None:
    settings = make_settings(tmp_path / "data", watch_self=False)
    with caplog.at_level(logging.INFO):
        server = await nursery.start(lambda task_status: app.serve(settings, certificate(settings),
                                                                   handle_signals=False, task_status=task_status))
        await server.aclose()
    assert read_db(settings, "SELECT count(*) FROM hosts") == [(0,)] and _agents() == []
    assert "MBOT_WATCH_SELF=0" in caplog.text
    assert "next: the Telegram bot is off" in caplog.text and "next: add a host" in caplog.text


def test_next_steps_are_quiet_once_set_up(settings) -> None:
    ready = dataclasses.replace(settings, bot_token="1:x")
    assert app.next_steps(ready, remote_hosts=1) == []
    assert len(app.next_steps(settings, remote_hosts=0)) == 2


def test_the_own_host_is_not_a_remote_one(settings) -> None:
    """A newcomer still gets the `next:` hint, and a lost certificate is replaced rather than refused while the
    server's own agent (which gets the new fingerprint by itself) is the only host."""
    _prepare(settings)
    conn = store.connect(settings.db_path)
    assert selfwatch.remote_hosts(conn) == 0
    conn.close()
    add_host(settings, "far")
    conn = store.connect(settings.db_path)
    assert selfwatch.remote_hosts(conn) == 1
    conn.close()
