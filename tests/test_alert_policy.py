"""Issue 16, the engine's part: a server restart is silent and a long outage is said once (ServerDown); a reboot or
shutdown from the chat opens a maintenance window (PowerBack, RebootOverdue). Pure: the engine and its texts."""
from __future__ import annotations

import json
from datetime import timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from mbot.alerts import (REBOOT, SHUTDOWN, START_GRACE, AlertEngine, BackOnline, Offline, OfflineRule, PowerBack,
                         RebootOverdue, ServerDown)
from mbot.telegram.alert_text import describe, outage_text

START = 10_000.0


def restarted(*hosts: tuple[int, float | None], rules=()) -> AlertEngine:
    """An engine that starts at START, knowing hosts (id, last seen) from the store, like Alerting.run."""
    engine = AlertEngine(rules, now=START)
    for host_id, last_seen in hosts:
        engine.add_host(host_id, last_seen=last_seen, interval=5.0)
    return engine


def run_until(engine: AlertEngine, until: float) -> list[tuple[float, object]]:
    out = []
    while (deadline := engine.next_deadline()) is not None and deadline <= until:
        out += [(deadline, e) for e in engine.tick(deadline)]
    return out


# --- restarts ----------------------------------------------------------------------------------------------------


def test_a_quick_restart_says_nothing_and_reports_nobody_offline_while_agents_reconnect():
    engine = restarted((1, START - 10), (2, START - 10))
    engine.server_was_down(START - 8, START)  # 8 s: not long
    assert engine.host_seen(1, START + 2.5, 5.0) == []
    assert engine.host_seen(2, START + 60, 5.0) == []  # an agent in its 60 s backoff: still in time
    for t in range(65, 600, 5):
        assert engine.observe(1, START + t, {}, START + t) == [] and engine.observe(2, START + t, {}, START + t) == []
        assert engine.tick(START + t) == []


def test_a_host_that_does_not_come_back_is_offline_after_the_grace_not_the_delay():
    engine = restarted((1, START - 10))
    engine.server_was_down(START - 8, START)
    assert run_until(engine, START + START_GRACE - 1) == []
    assert run_until(engine, START + START_GRACE) == [(START + 90, Offline(1, START - 10, START + 90))]


def test_a_long_outage_is_said_once_as_soon_as_everyone_is_back():
    engine = restarted((1, START - 1800), (2, START - 1800), (3, START - 1800))
    engine.server_was_down(START - 1790, START)
    assert engine.host_seen(1, START + 1, 5.0) == []
    assert engine.host_seen(2, START + 2, 5.0) == []
    assert engine.host_seen(3, START + 3, 5.0) == [ServerDown(START - 1790, START, (1, 2, 3), (), START + 3)]
    assert not [e for _, e in run_until(engine, START + 7200) if isinstance(e, ServerDown)]  # said once


def test_hosts_that_did_not_come_back_are_named_once_then_follow_the_offline_path():
    engine = restarted((1, START - 1800), (2, START - 1800), (3, START - 1800), (4, START - 1800),
                       (6, None))  # never connected: not a host that "did not come back"
    engine.server_was_down(START - 1790, START)
    for host in (1, 2, 3):
        assert engine.host_seen(host, START + host, 5.0) == []
        engine.observe(host, START + 89, {}, START + 89)
    # One message for box4: the report; no "box4 is offline" besides.
    assert run_until(engine, START + 90) == [(START + 90, ServerDown(START - 1790, START, (1, 2, 3), (4,), START + 90))]
    assert engine.host_status(4).offline_since == START - 1800
    assert [e.host_id for _, e in run_until(engine, START + 3600)] == [1, 2, 3]  # the others' silence is news
    back = engine.host_seen(4, START + 4000, 5.0)
    assert back == [BackOnline(4, START + 4000 - (START - 1800), START + 4000)]


def test_a_host_already_offline_before_the_outage_is_not_in_the_report():
    before = AlertEngine(now=0.0)
    before.host_seen(1, 100.0, 5.0)
    before.host_seen(2, 100.0, 5.0)
    assert [type(e) for e in before.tick(5000.0)] == [Offline, Offline]
    before.host_seen(1, 5000.0, 5.0)  # host 1 back; host 2 stays offline
    snapshot = json.loads(json.dumps(before.snapshot()))
    engine = AlertEngine.restore(snapshot, [], now=START)
    engine.server_was_down(5001.0, START)
    events = run_until(engine, START + 3600)
    assert [e for _, e in events] == [ServerDown(5001.0, START, (), (1,), START + 90)]


def test_a_longer_offline_delay_of_its_own_is_kept_and_not_folded_into_the_report():
    engine = restarted((1, START - 1800), (2, START - 1800), rules=[OfflineRule(2, delay=600.0)])
    engine.server_was_down(START - 1790, START)
    events = run_until(engine, START + 3600)
    assert [e for _, e in events] == [ServerDown(START - 1790, START, (), (1,), START + 90),
                                      Offline(2, START - 1800, START + 600)]


def test_muted_and_disabled_hosts_are_not_named_missing():
    engine = restarted((1, START - 1800), (2, START - 1800), (3, START - 1800), rules=[OfflineRule(2, enabled=False)])
    engine.mute(3, START + 7200)
    engine.server_was_down(START - 1790, START)
    assert run_until(engine, START + 3600) == [(START + 90, ServerDown(START - 1790, START, (), (1,), START + 90))]


# --- power actions from the chat ------------------------------------------------------------------------------------

BOOT, NEW_BOOT = 1_700_000_000.0, 1_700_000_900.0


def up_host(engine: AlertEngine, t: float = 1000.0) -> None:
    engine.host_seen(1, t, 5.0, BOOT)


def test_a_reboot_is_silent_then_back_after_with_the_boot_time():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, BOOT)
    assert engine.observe(1, 1002.0, {}, 1002.0) == []  # the agent still sends until the machine goes down
    assert run_until(engine, 1100.0) == []  # offline, silently
    assert engine.host_status(1).offline_since == 1002.0 and engine.host_status(1).power == REBOOT
    assert engine.host_seen(1, 1048.0, 5.0, BOOT) == []  # a reconnect of the same boot is not the new one...
    engine.tick(1200.0)
    back = engine.host_seen(1, 1250.0, 5.0, NEW_BOOT)  # ...a hello from the new boot is
    assert back == [PowerBack(1, REBOOT, 1001.0, 1250.0, NEW_BOOT)]
    assert engine.host_status(1).power is None
    assert run_until(engine, 5000.0) == [(1280.0, Offline(1, 1250.0, 1280.0))]  # watched as usual again


def test_a_reboot_that_does_not_come_back_within_the_grace_is_one_alert_then_back_online():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, BOOT)
    assert run_until(engine, 1600.0) == []
    assert run_until(engine, 1601.0) == [(1601.0, RebootOverdue(1, 1001.0, 1000.0, 1601.0))]
    assert run_until(engine, 9000.0) == []
    assert engine.host_seen(1, 9000.0, 5.0, NEW_BOOT) == [BackOnline(1, 8000.0, 9000.0)]


def test_a_reboot_that_never_happened_closes_its_window_silently():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, BOOT)
    for t in range(1005, 1700, 5):
        assert engine.observe(1, float(t), {}, float(t)) == [] and engine.tick(float(t)) == []
    assert engine.host_status(1).power is None
    assert run_until(engine, 1800.0) == [(1725.0, Offline(1, 1695.0, 1725.0))]  # a later outage is an outage


def test_an_agent_without_boot_time_is_back_at_its_first_hello():
    engine = AlertEngine()
    engine.host_seen(1, 1000.0, 5.0)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, None)
    run_until(engine, 1100.0)
    assert engine.host_seen(1, 1120.0, 5.0) == [PowerBack(1, REBOOT, 1001.0, 1120.0, None)]


def test_a_shutdown_is_silent_and_held_as_shut_down_until_it_is_back():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, SHUTDOWN, 1001.0, 600.0, BOOT)
    assert run_until(engine, 100_000.0) == []
    assert engine.host_status(1).power == SHUTDOWN and engine.power_states() == {1: SHUTDOWN}
    snapshot = json.loads(json.dumps(engine.snapshot()))
    restored = AlertEngine.restore(snapshot, [], now=100_000.0)  # held across a restart of the server too
    assert run_until(restored, 200_000.0) == [] and restored.power_states() == {1: SHUTDOWN}
    assert restored.host_seen(1, 200_000.0, 5.0, NEW_BOOT) == [PowerBack(1, SHUTDOWN, 1001.0, 200_000.0, NEW_BOOT)]
    assert restored.power_states() == {}


def test_a_refused_power_action_is_cancelled_and_the_host_watched_as_usual():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, BOOT)
    engine.cancel_power(1)
    assert run_until(engine, 2000.0) == [(1030.0, Offline(1, 1000.0, 1030.0))]


def test_a_reboot_window_survives_a_restart():
    engine = AlertEngine()
    up_host(engine)
    engine.expect_power(1, REBOOT, 1001.0, 600.0, BOOT)
    restored = AlertEngine.restore(json.loads(json.dumps(engine.snapshot())), [], now=1010.0)
    assert run_until(restored, 1600.0) == []
    assert restored.host_seen(1, 1300.0, 5.0, NEW_BOOT) == [PowerBack(1, REBOOT, 1001.0, 1300.0, NEW_BOOT)]


# --- texts -------------------------------------------------------------------------------------------------------


BERLIN = ZoneInfo("Europe/Berlin")
T0 = 1_764_594_120.0  # 2025-12-01 13:02 UTC, 14:02 in Berlin


@pytest.mark.parametrize("back, missing, news", [
    (["box1", "box2", "box3"], ["box4"], "3 hosts came back, 1 did not: box4"),
    (["box1"], ["box4", "box5"], "1 host came back, 2 did not: box4, box5"),
    (["box1", "box2"], [], "all 2 hosts came back"),
    (["box1"], [], "your host came back"),
    ([], ["box4"], "box4 did not come back"),
    ([], ["box4", "box5"], "none of your 2 hosts came back: box4, box5"),
])
def test_outage_text(back, missing, news):
    event = ServerDown(T0, T0 + 29 * 60, (), (), T0 + 30 * 60)
    assert outage_text(event, back, missing, BERLIN) == f"mbot was down 14:02-14:31 (29 min); {news}"


def test_outage_text_over_midnight_names_the_day():
    event = ServerDown(T0, T0 + 12 * 3600, (), (), T0 + 12 * 3600)
    assert outage_text(event, ["a"], [], timezone.utc).startswith("mbot was down Dec 1 13:02-01:02 (12 h)")


def test_power_texts():
    assert (describe(PowerBack(1, REBOOT, T0, T0 + 47, T0 + 11), "box1", BERLIN)
            == "box1 is back after 47 s (booted 14:02:11)")
    assert (describe(PowerBack(1, SHUTDOWN, T0, T0 + 7200, None), "box1", BERLIN)
            == "box1 is back, 2 h after its shutdown from the chat")
    assert (describe(RebootOverdue(1, T0, T0 + 5, T0 + 600), "box1")
            == "box1 is not back 10 min after its reboot (last seen 9 min 55 s ago)")


power_ops = st.lists(st.one_of(
    st.tuples(st.just("sample"), st.sampled_from([1.0, 5.0, 40.0, 700.0])),
    st.tuples(st.just("hello"), st.sampled_from([1.0, 40.0, 700.0]), st.sampled_from([BOOT, NEW_BOOT, None])),
    st.tuples(st.just("tick"), st.sampled_from([10.0, 100.0, 1000.0])),
    st.tuples(st.just("power"), st.sampled_from([REBOOT, SHUTDOWN]), st.sampled_from([BOOT, None])),
    st.tuples(st.just("cancel")),
), max_size=30)


@settings(max_examples=150)
@given(power_ops, power_ops)
def test_power_windows_restore_like_never_stopping(before, after):
    engines = [AlertEngine()]
    clock = [1000.0]

    def run(engine, op, now):
        kind = op[0]
        if kind == "sample":
            return engine.observe(1, now, {}, now)
        if kind == "hello":
            return engine.host_seen(1, now, 5.0, op[2])
        if kind == "tick":
            return engine.tick(now)
        if kind == "power":
            engine.expect_power(1, op[1], now, 600.0, op[2])
        else:
            engine.cancel_power(1)
        return []

    def step(op):
        if op[0] in ("sample", "hello", "tick"):
            clock[0] += op[1]
        outs = [run(engine, op, clock[0]) for engine in engines]
        assert all(out == outs[0] for out in outs)
        assert all(e.power_states() == engines[0].power_states() for e in engines)

    for op in before:
        step(op)
    engines.append(AlertEngine.restore(json.loads(json.dumps(engines[0].snapshot())), []))
    for op in after:
        step(op)


# --- how a host in a power window looks ---------------------------------------------------------------------------


def test_views_say_rebooting_or_shut_down_only_while_the_host_is_offline():
    from mbot.model import Host
    from mbot.telegram import views

    def host(host_id: int, last_seen: float) -> Host:
        return Host(host_id, f"box{host_id}", 1, f"k{host_id}", 0.0, {}, 1, 1, None, last_seen, {"cpu": 5.0}, 1)

    now = 10_000.0
    down, up, other = host(1, now - 600), host(2, now - 1), host(3, now - 600)
    power = {1: SHUTDOWN, 2: REBOOT}
    listing, _ = views.host_list([down, up, other], now, power)
    assert listing.splitlines() == ["⏻ <b>box1</b> - shut down, last seen 10 min ago",
                                    "🟢 <b>box2</b> - online, last seen 1 s ago",
                                    "🔴 <b>box3</b> - offline, last seen 10 min ago"]
    summary, _ = views.summary([down, up], now, power)
    assert summary.splitlines()[0] == "⏻ <b>box1</b> shut down, last seen 10 min ago"
    assert views.host_card(down, now, power=REBOOT).startswith("<b>box1</b> 🔁 rebooting · last seen 10 min ago")
    assert views.host_card(up, now, power=REBOOT).startswith("<b>box2</b> 🟢 online")
