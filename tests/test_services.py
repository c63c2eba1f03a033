"""systemd services: the agent reads them with systemctl (a fake on PATH, shaped like systemd's documented output),
sends a `services` snapshot, and `/setalert box1 service:nginx down` fires and resolves through the fake Bot API."""
from __future__ import annotations

import json
import logging
import os

import pytest
import trio

from helpers import (ROOT, ack_reaching, add_host, load_agent, read_db, receive_json, server_certificate,
                     wait_for_samples)
from mbot import members, protocol
from mbot.alerts import AlertEngine, Firing, Resolved
from mbot.protocol import ProtocolError
from mbot.telegram import alert_commands, alert_text
from test_agent_e2e import agent_config
from test_bot import ALICE, fake, say, start_server  # noqa: F401  (fake is a fixture)

agent = load_agent()
FAKE_SYSTEMCTL = str(ROOT / "tests" / "fakes" / "systemctl")
BOOT = 1764000000.0

UNITS = [
    {"unit": "nginx.service", "active": "active", "sub": "running"},
    {"unit": "cron.service", "active": "active", "sub": "running"},
    {"unit": "backup.service", "active": "failed", "sub": "failed", "since_mono": 7_200_000_000},
    {"unit": "old.service", "active": "inactive", "sub": "dead"},
    {"unit": "ghost.service", "load": "not-found", "active": "failed", "sub": "failed"},
]


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """The fake systemctl's state file: write a list of units to change what it says."""
    state = tmp_path / "units.json"

    def write(units):
        state.write_text(json.dumps(units))

    write(UNITS)
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", str(state))
    return write


# --- the agent's side --------------------------------------------------------------------------------------------


def test_plain_table_of_an_older_systemd_reads_like_json():
    table = ("nginx.service loaded active running A high performance web server\n"
             "\u25cf backup.service loaded failed failed Nightly backup\n")
    rows = [{"unit": "nginx.service", "load": "loaded", "active": "active", "sub": "running"},
            {"unit": "backup.service", "load": "loaded", "active": "failed", "sub": "failed"}]
    assert agent.parse_units(table) == rows
    as_json = json.dumps([{**row, "description": "x"} for row in rows])
    assert agent.parse_units(as_json) == rows


@pytest.mark.parametrize("plain", ["0", "1"])
def test_watcher_reports_loaded_units_that_are_not_inactive(systemd, monkeypatch, plain):
    monkeypatch.setenv("FAKE_SYSTEMCTL_PLAIN", plain)
    items = agent.ServiceWatcher(BOOT, systemctl=FAKE_SYSTEMCTL).collect()
    # Failed first; inactive and not-found units are left out (a watched one that is missing reads as stopped).
    assert items == [{"unit": "backup.service", "state": "failed", "sub": "failed", "since": BOOT + 7200},
                     {"unit": "cron.service", "state": "active", "sub": "running"},
                     {"unit": "nginx.service", "state": "active", "sub": "running"}]
    for i, item in enumerate(items):
        protocol.SNAPSHOT_KINDS["services"].item(item, f"items[{i}]", None)


def test_a_host_without_systemd_is_told_once_and_left_alone(systemd, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_SYSTEMCTL_FAIL", "1")
    caplog.set_level(logging.INFO, logger="mbot.agent")
    watcher = agent.ServiceWatcher(BOOT, systemctl=FAKE_SYSTEMCTL)
    assert watcher.available and watcher.collect() is None
    assert not watcher.available  # asked again only 10 minutes later
    assert caplog.text.count("service states off") == 1 and "not been booted with systemd" in caplog.text


# --- the server's side -------------------------------------------------------------------------------------------


def services_frame(items):
    return json.dumps({"type": "snapshot", "kind": "services", "v": 1, "ts": BOOT, "items": items})


def test_services_snapshot_bounds():
    frame = protocol.parse_agent_frame(services_frame([{"unit": "evil\n<b>.service", "state": "failed" * 20}]))
    item = frame.items[0]
    assert "\n" not in item["unit"] and len(item["state"]) <= 32
    for bad in ([{"unit": ""}], [{"state": "active"}], [{"unit": "a.service"}, {"unit": "a.service"}],
                [{"unit": "a.service", "since": "yesterday"}]):
        with pytest.raises(ProtocolError):
            protocol.parse_agent_frame(services_frame(bad))


def test_setalert_grammar_for_a_service():
    spec = alert_commands.parse_setalert(["box1", "service:nginx", "down"])
    assert (spec.metric, spec.threshold, spec.below) == ("service:nginx.service", members.THRESHOLD, True)
    assert alert_commands.parse_setalert(["box1", "service:nginx"]).metric == "service:nginx.service"
    assert alert_commands.parse_setalert(["box1", "service:cron.timer", "down", "2m"]).for_s == 120
    assert alert_commands.parse_delalert(["box1", "Service:nginx"]).metric == "service:nginx.service"
    with pytest.raises(alert_commands.AlertUsageError, match="down"):
        alert_commands.parse_setalert(["box1", "service:nginx", "90"])
    with pytest.raises(alert_commands.AlertUsageError, match="unknown metric"):
        alert_commands.parse_setalert(["box1", "service:bad name;rm", "down"])


def test_engine_fires_when_a_watched_unit_leaves_active_and_resolves_when_it_returns():
    rule = alert_commands.parse_setalert(["box1", "service:nginx", "down"]).rule(1)
    engine = AlertEngine([rule], now=0.0)
    watched = [rule.metric]

    def sample(t, units):
        series = {"cpu": 5.0, **members.codes(watched, {"services": units})}
        return engine.observe(1, t, series, t)

    up = [{"unit": "nginx.service", "state": "active"}]
    assert sample(1, up) == []
    fired = sample(2, [{"unit": "nginx.service", "state": "failed"}])
    assert [type(e) for e in fired] == [Firing]
    assert alert_text.describe(fired[0], "box1") == "box1: service nginx.service is failed"
    assert sample(3, []) == []  # stopped now: still down, no second message
    assert sample(4, up) == []  # back, confirmed by the next sample (as every alert resolves)
    resolved = sample(5, up)
    assert [type(e) for e in resolved] == [Resolved]
    assert alert_text.describe(resolved[0], "box1").startswith("box1: service nginx.service back to normal (running)")


# --- end to end ----------------------------------------------------------------------------------------------------


async def test_service_alert_from_systemctl_to_the_chat(nursery, settings, fake, tmp_path, systemd):
    server = await start_server(nursery, settings, fake)
    key = add_host(settings, "box1", owner=ALICE)
    collector = agent.Collector(gpu=False)
    config = agent_config(server, key.secret, tmp_path, services_every=0.2)
    runner = agent.Agent(config, collector, services=agent.ServiceWatcher(collector.boot_time,
                                                                         systemctl=FAKE_SYSTEMCTL))
    await runner.refresh_facts()
    scope = trio.CancelScope()

    async def run():
        with scope:
            await runner.run()

    nursery.start_soon(run)
    await wait_for_samples(server, settings, "box1", 1)
    # The rule reads the stored list: before the agent's first one arrives, nginx is not in it (not running), and
    # the alert would fire at once, before the failure this test makes.
    with trio.fail_after(10):
        while not read_db(settings, "SELECT 1 FROM snapshots WHERE kind = 'services'"):
            await server.writer.next_commit()
    reply = await say(fake, ALICE, "/setalert box1 service:nginx down")
    assert "service:nginx.service down" in reply["text"]

    systemd([{**UNITS[0], "active": "failed", "sub": "failed", "since_mono": 5_000_000}, *UNITS[1:]])
    since = len(fake.sent)
    firing = await fake.wait_for(lambda c: c.method == "sendMessage" and "nginx" in c.params.get("text", ""),
                                 since=since)
    assert firing.params["chat_id"] == ALICE and "box1: service nginx.service is failed" in firing.params["text"]
    info = await say(fake, ALICE, "/info box1")
    assert "Services not running (2 of 3):" in info["text"] and "• nginx.service failed for " in info["text"]
    assert "• backup.service failed for " in info["text"]

    systemd(UNITS)
    since = len(fake.sent)
    resolved = await fake.wait_for(lambda c: c.method == "sendMessage" and "nginx" in c.params.get("text", ""),
                                   since=since)
    assert "back to normal (running)" in resolved.params["text"]
    alerts = await say(fake, ALICE, "/alerts")
    assert "service:nginx.service down" in alerts["text"] and "ok (running)" in alerts["text"]
    scope.cancel()
    collector.close()
    await server.aclose()
    assert os.environ["FAKE_SYSTEMCTL_STATE"]  # the fixture's environment reached the agent's systemctl


async def test_a_restarted_server_judges_watched_units_by_the_stored_list(settings, nursery):
    """Agents send their services only when the list changes: after a restart the server starts from the stored one."""
    import time as _time

    from helpers import certificate, hello_frame, open_tls, read_db, upgrade
    from mbot import alerting, app, store
    from mbot.alerts import AlertRule

    key = add_host(settings, "box1")
    host_id = read_db(settings, "SELECT id FROM hosts")[0][0]
    conn = store.connect(settings.db_path)
    with store.transaction(conn):
        alerting.save_rule(conn, AlertRule(host_id, "service:nginx.service", members.THRESHOLD, below=True))
        store.put_snapshot(conn, host_id, "services", 1, BOOT, BOOT, json.dumps(
            [{"unit": "nginx.service", "state": "failed", "sub": "failed"}]))
    conn.close()
    server = await nursery.start(lambda task_status: app.serve(settings, server_certificate(settings),
                                                               handle_signals=False, task_status=task_status))
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    now = _time.time()
    await ws.send_message(json.dumps({"type": "sample", "seq": 1, "ts": now, "metrics": {"cpu": 1.0}}))
    await ack_reaching(ws, 1)
    (state,) = [s for s in server.alerting.engine.states(host_id) if s.series == "service:nginx.service"]
    assert state.state == "firing" and state.value == members.FAILED
    await trio.aclose_forcefully(stream)
    await server.aclose()
