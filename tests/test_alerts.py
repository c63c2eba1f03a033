"""mbot.alerts as a pure engine: parsing, FOR, hysteresis, reminders, offline, mute, late replays, restart."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mbot.alerts import AlertEngine, AlertRule, BackOnline, Firing, MuteEnded, Offline, OfflineRule, Reminder, Resolved
from mbot.telegram import alert_commands, alert_text
from mbot.telegram.alert_commands import (AlertSpec, AlertUsageError, DeleteSpec, MuteSpec, OfflineSpec, parse_delalert,
                                          parse_mute, parse_setalert, parse_unmute)
from mbot.telegram.alert_text import describe

H = 1  # the host most tests use
CPU90 = AlertRule(H, "cpu", 90.0)


def kinds(events):
    return [type(e).__name__ for e in events]


class Feed:
    """Drives an engine like the server would: samples every `interval` s, ticks at every deadline in between."""

    def __init__(self, engine: AlertEngine, host: int = H, t: float = 1000.0, interval: float = 5.0) -> None:
        self.engine, self.host, self.t, self.interval = engine, host, t, interval
        self.events: list = []
        self.times: list[tuple[float, object]] = []
        self.events += engine.host_seen(host, t, interval)

    def advance(self, until: float) -> None:
        while (deadline := self.engine.next_deadline()) is not None and deadline <= until:
            self._record(deadline, self.engine.tick(deadline))
        self.t = until

    def sample(self, **series: float) -> list:
        self.advance(self.t + self.interval)
        named = {k.replace("__", ":/").replace("_S_", "/"): v for k, v in series.items()}
        out = self.engine.observe(self.host, self.t, named, self.t)
        self._record(self.t, out)
        return out

    def _record(self, when: float, events: list) -> None:
        self.events += events
        self.times += [(when, e) for e in events]


# --- parsing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["box1", "cpu", "90", "5m"], AlertSpec("box1", "cpu", 90.0, False, 300.0)),
    (["box1", "CPU", "90%"], AlertSpec("box1", "cpu", 90.0, False, 0.0)),
    (["box1", "disk:/Data", "<10", "1h30m"], AlertSpec("box1", "disk:/Data", 10.0, True, 5400.0)),
    (["box1", "disk", ">95"], AlertSpec("box1", "disk", 95.0, False, 0.0)),
    (["box1", "net_down", "10M", "30s"], AlertSpec("box1", "net_down", 10 * 1024**2, False, 30.0)),
    (["box1", "net_up", "<1.5KiB/s", "2h"], AlertSpec("box1", "net_up", 1.5 * 1024, True, 7200.0)),
    (["box1", "temp", "80C", "1d"], AlertSpec("box1", "temp", 80.0, False, 86400.0)),
    (["box1", "gputemp", "85"], AlertSpec("box1", "gputemp", 85.0, False, 0.0)),
    (["box1", "load", "4.5", "1.5h"], AlertSpec("box1", "load", 4.5, False, 5400.0)),
    (["box1", "vram", "95", "0s"], AlertSpec("box1", "vram", 95.0, False, 0.0)),
    (["box1", "offline", "2m"], OfflineSpec("box1", 120.0)),
    (["box1", "offline"], OfflineSpec("box1", None)),
    # What people type for the catalogue's words: the rule is stored under the catalogue's own word.
    (["box1", "temperatures", "80"], AlertSpec("box1", "temp", 80.0, False, 0.0)),
    (["box1", "Temps", "80"], AlertSpec("box1", "temp", 80.0, False, 0.0)),
    (["box1", "gpus", "90"], AlertSpec("box1", "gpu", 90.0, False, 0.0)),
    (["box1", "memory", "90"], AlertSpec("box1", "ram", 90.0, False, 0.0)),
    (["box1", "disks:/Data", "<10"], AlertSpec("box1", "disk:/Data", 10.0, True, 0.0)),
    (["box1", "download", "10M"], AlertSpec("box1", "net_down", 10 * 1024**2, False, 0.0)),
])
def test_parse_setalert(args, expected):
    assert parse_setalert(args) == expected


@pytest.mark.parametrize("args, problem", [
    ([], "METRIC"),
    (["box1"], "METRIC"),
    (["box1", "cpux", "90"], "unknown metric 'cpux'"),
    (["box1", "disk:", "90"], "unknown metric"),
    # An alias of a word that is no alert selector (net: down or up?) stays unknown, and the reply lists them.
    (["box1", "network", "90"], "unknown metric 'network'. METRIC: cpu, load, ram, swap, disk, net_down, net_up"),
    (["box1", "temperaturez", "90"], "unknown metric 'temperaturez'"),
    (["box1", "cpu"], "THRESHOLD is missing"),
    (["box1", "cpu", "abc"], "THRESHOLD 'abc'"),
    (["box1", "cpu", "150"], "between"),
    (["box1", "cpu", "-1"], "between"),
    (["box1", "load", "4%"], "THRESHOLD '4%'"),
    (["box1", "net_down", "10X"], "THRESHOLD '10X'"),
    (["box1", "cpu", "90", "5x"], "FOR '5x' is not a duration"),
    (["box1", "cpu", "90", "5"], "FOR '5' is not a duration"),
    (["box1", "cpu", "90", "8d"], "FOR must be between"),
    (["box1", "cpu", "90", "5m", "extra"], "too many"),
    (["box1", "offline", "5s"], "DELAY must be between 30 s"),
    (["box1", "offline", "2m", "x"], "one DELAY"),
])
def test_parse_setalert_errors_start_with_usage(args, problem):
    with pytest.raises(AlertUsageError) as info:
        parse_setalert(args)
    message = str(info.value)
    assert message.startswith("Usage: /setalert NAME METRIC THRESHOLD [FOR]\n")
    assert problem in message


def test_parse_delalert_mute_unmute():
    assert parse_delalert(["box1", "Disk:/Home"]) == DeleteSpec("box1", "disk:/Home")
    assert parse_delalert(["box1", "temperatures"]) == DeleteSpec("box1", "temp")
    assert parse_delalert(["box1", "offline"]) == DeleteSpec("box1", "offline")
    assert parse_mute(["box1", "2h"]) == MuteSpec("box1", 7200.0)
    assert parse_unmute(["box1"]) == "box1"
    for parse, args, usage in [
        (parse_delalert, ["box1"], alert_commands.USAGE_DELALERT), (parse_delalert, ["box1", "nope"], alert_commands.USAGE_DELALERT),
        (parse_mute, ["box1"], alert_commands.USAGE_MUTE), (parse_mute, ["box1", "soon"], alert_commands.USAGE_MUTE),
        (parse_mute, ["box1", "0s"], alert_commands.USAGE_MUTE), (parse_mute, ["box1", "400d"], alert_commands.USAGE_MUTE),
        (parse_unmute, [], alert_commands.USAGE_UNMUTE), (parse_unmute, ["a", "b"], alert_commands.USAGE_UNMUTE),
    ]:
        with pytest.raises(AlertUsageError) as info:
            parse(args)
        assert str(info.value).startswith(usage + "\n")


@settings(max_examples=300)
@given(st.lists(st.text(max_size=12), max_size=5))
def test_parsers_only_ever_answer_usage(args):
    for parse in (parse_setalert, parse_delalert, parse_mute, parse_unmute):
        try:
            parse(args)
        except AlertUsageError as exc:
            assert str(exc).startswith("Usage: /")


def test_rule_round_trips_and_validates():
    rule = AlertRule(3, "disk:/home", 10.0, True, 60.0)
    assert AlertRule.from_dict(json.loads(json.dumps(rule.as_dict()))) == rule
    assert OfflineRule.from_dict(OfflineRule(3, 120.0).as_dict()) == OfflineRule(3, 120.0)
    with pytest.raises(ValueError):
        AlertRule(3, "cpux", 1.0)


# --- selectors ---------------------------------------------------------------------------------------------------


def test_family_selectors_match_their_series_and_fire_separately():
    rules = [AlertRule(H, m, 50.0) for m in ("gpu", "vram", "temp", "gputemp", "disk")]
    engine = AlertEngine(rules + [AlertRule(H, "disk:/home", 50.0)])
    over = {"gpu0": 99, "gpu1": 99, "gputemp0": 99, "vram0": 99, "vram_used0": 99, "vram_total0": 99,
            "temp:cpu": 99, "disk:/": 99, "disk:/home": 99, "disk_used:/": 99, "disk_total:/": 99, "cpu": 99}
    events = engine.observe(H, 1.0, over, 1.0)
    fired = sorted((e.rule.metric, e.series) for e in events)
    assert fired == [("disk", "disk:/"), ("disk", "disk:/home"), ("disk:/home", "disk:/home"),
                     ("gpu", "gpu0"), ("gpu", "gpu1"), ("gputemp", "gputemp0"), ("temp", "temp:cpu"),
                     ("vram", "vram0")]
    # disk:/ back to normal, disk:/home still full: only the one resolves.
    engine.observe(H, 2.0, {**over, "disk:/": 10}, 2.0)
    events = engine.observe(H, 3.0, {**over, "disk:/": 10}, 3.0)
    assert [(e.rule.metric, e.series) for e in events] == [("disk", "disk:/")]


def test_simple_selectors():
    metrics = {"cpu": "cpu", "ram": "ram", "swap": "swap", "load": "load1", "net_up": "net_tx", "net_down": "net_rx"}
    engine = AlertEngine([AlertRule(H, m, 1.0) for m in metrics])
    events = engine.observe(H, 1.0, {s: 5.0 for s in metrics.values()} | {"load5": 9.0, "net_rx:eth0": 9.0}, 1.0)
    assert sorted((e.rule.metric, e.series) for e in events) == sorted(metrics.items())


# --- FOR and hysteresis against a reference model ----------------------------------------------------------------

DELAY = 30.0  # default offline delay at a 5 s interval; also the longest gap a pending alert survives


def reference(points, threshold, below, for_s, clear_level):
    """The documented semantics written as history: runs of samples over the threshold, 2 clear samples to resolve."""
    sign = -1 if below else 1
    over = [sign * v > sign * threshold for _, v in points]
    clear = [sign * v <= sign * clear_level for _, v in points]
    events, firing, run_start = [], None, None
    for i, (ts, value) in enumerate(points):
        unbroken = i > 0 and over[i - 1] and 0 <= ts - points[i - 1][0] <= DELAY
        run_start = (run_start if unbroken else i) if over[i] else None
        if firing is None:
            if run_start is not None and ts - points[run_start][0] >= for_s:
                firing = points[run_start][0]
                events.append(("Firing", firing, ts, value))
        elif clear[i] and i > 0 and clear[i - 1]:
            events.append(("Resolved", firing, points[i - 1][0] - firing, value))
            firing = None
    return events


def as_tuples(events):
    out = []
    for e in events:
        if isinstance(e, Firing):
            out.append(("Firing", e.since, e.at, e.value))
        elif isinstance(e, Resolved):
            out.append(("Resolved", e.since, e.duration, e.value))
        else:
            out.append(type(e).__name__)
    return out


points_strategy = st.lists(
    st.tuples(st.sampled_from([0.0, 1.0, 5.0, 5.0, 5.0, 7.5, 29.0, 31.0, -3.0]),
              st.one_of(st.floats(80, 100), st.sampled_from([88.0, 89.9, 90.0, 90.1, 92.0, 95.0]))),
    max_size=80)


@settings(max_examples=300)
@given(points_strategy, st.sampled_from([0.0, 5.0, 10.0, 12.5, 60.0]), st.booleans())
def test_engine_matches_reference_model(steps, for_s, below):
    threshold = 90.0
    rule = AlertRule(H, "cpu", threshold, below, for_s)
    engine = AlertEngine([rule], repeat=0)
    points, ts, events = [], 1000.0, []
    for dt, value in steps:
        ts += dt
        points.append((ts, value))
        # now = a fixed small lag after the latest ts seen, so no sample counts as late
        events += engine.observe(H, ts, {"cpu": value}, ts + 0.1)  # fresh: a constant lag
    clear_level = threshold + 2 if below else threshold - 2
    assert as_tuples(events) == reference(points, threshold, below, for_s, clear_level)


@given(st.floats(0, 600), st.sampled_from([1.0, 2.5, 5.0, 10.0]))
def test_for_is_respected_exactly(for_s, interval):
    engine = AlertEngine([AlertRule(H, "cpu", 90.0, False, for_s)])
    start = 1000.0
    fired_at = None
    for i in range(int(for_s / interval) + 3):
        ts = start + i * interval
        events = engine.observe(H, ts, {"cpu": 95.0}, ts)
        if events:
            assert fired_at is None
            fired_at = ts
            assert events[0].since == start
    # The first sample at or after start + FOR, not one interval more, not one sample less.
    assert fired_at == start + interval * -(-for_s // interval)


@given(st.lists(st.floats(88.0 + 0.01, 100.0), min_size=1, max_size=200))
def test_jitter_above_the_resolve_level_fires_once(values):
    engine = AlertEngine([CPU90])
    events = [e for i, v in enumerate([95.0] + values) for e in engine.observe(H, 5.0 * i, {"cpu": v}, 5.0 * i)]
    assert kinds(events) == ["Firing"]


@given(st.lists(st.tuples(st.floats(85, 95), st.floats(85, 95)), min_size=1, max_size=100))
def test_jitter_across_the_margin_never_flaps(pairs):
    # Every other sample is over the threshold: never two clear samples in a row, so one Firing and nothing else.
    engine = AlertEngine([CPU90])
    values = [v for low, _ in pairs for v in (95.0, low)]
    events = [e for i, v in enumerate(values) for e in engine.observe(H, 5.0 * i, {"cpu": v}, 5.0 * i)]
    assert kinds(events) == ["Firing"]


@given(st.lists(st.floats(0, 100), max_size=150), st.sampled_from([0.0, 10.0]))
def test_one_firing_then_one_resolved_per_incident(values, for_s):
    engine = AlertEngine([AlertRule(H, "cpu", 90.0, False, for_s)], repeat=0)
    events = [e for i, v in enumerate(values) for e in engine.observe(H, 5.0 * i, {"cpu": v}, 5.0 * i)]
    names = kinds(events)
    assert names == ["Firing", "Resolved"] * (len(names) // 2) + ["Firing"] * (len(names) % 2)
    for fired, resolved in zip(events[::2], events[1::2]):
        assert resolved.since == fired.since and resolved.duration >= fired.at - fired.since


def test_resolve_level_stays_reachable_near_zero():
    engine = AlertEngine([AlertRule(H, "cpu", 1.0)])
    assert kinds(engine.observe(H, 1, {"cpu": 3.0}, 1)) == ["Firing"]
    engine.observe(H, 2, {"cpu": 0.4}, 2)
    assert kinds(engine.observe(H, 3, {"cpu": 0.4}, 3)) == ["Resolved"]


def test_pending_is_cancelled_by_one_sample_under():
    engine = AlertEngine([AlertRule(H, "cpu", 90.0, False, 10.0)])
    assert engine.observe(H, 0, {"cpu": 95}, 0) == []
    assert engine.observe(H, 5, {"cpu": 89}, 5) == []
    assert engine.observe(H, 10, {"cpu": 95}, 10) == []
    assert engine.observe(H, 15, {"cpu": 95}, 15) == []
    assert kinds(engine.observe(H, 20, {"cpu": 95}, 20)) == ["Firing"]


# --- reminders ---------------------------------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.sampled_from([60.0, 600.0, 1800.0]), st.integers(1, 3), st.floats(0, 1))
def test_reminders_come_every_repeat_while_firing(repeat, count, phase):
    engine = AlertEngine([CPU90], repeat=repeat)
    feed = Feed(engine)
    fired = feed.sample(cpu=95)
    assert kinds(fired) == ["Firing"]
    fired_now = feed.t
    while feed.t < fired_now + repeat * (count + phase):
        feed.sample(cpu=95)
    reminders = [(t, e) for t, e in feed.times if isinstance(e, Reminder)]
    assert [t for t, _ in reminders] == [fired_now + k * repeat for k in range(1, len(reminders) + 1)]
    assert len(reminders) == int((feed.t - fired_now) // repeat)
    assert all(e.since == fired[0].since and e.value == 95 for _, e in reminders)
    # Resolved ends the reminders.
    feed.sample(cpu=10)
    feed.sample(cpu=10)
    before = len(feed.events)
    feed.advance(feed.t + 10 * repeat)
    assert kinds(feed.events[before:]) == ["Offline"]


def test_a_late_tick_gives_one_reminder_not_a_burst():
    engine = AlertEngine([CPU90], repeat=60.0)
    engine.host_seen(H, 0, 5.0)
    engine.set_rule(OfflineRule(H, enabled=False))
    engine.observe(H, 0, {"cpu": 95}, 0)
    assert engine.next_deadline() == 30.0  # (quiet) offline first
    engine.tick(30.0)
    engine.observe(H, 31, {"cpu": 95}, 31)  # back: the reminder keeps its schedule
    assert engine.next_deadline() == 60.0
    engine.observe(H, 200, {"cpu": 95}, 200)
    assert kinds(engine.tick(200)) == ["Reminder"]  # 140 s late: one reminder
    assert engine.next_deadline() == 230.0  # offline timer; the next reminder is at 260
    engine.observe(H, 229, {"cpu": 95}, 229)
    assert engine.next_deadline() == 259.0
    engine.observe(H, 258, {"cpu": 95}, 258)
    assert engine.next_deadline() == 260.0


# --- offline -----------------------------------------------------------------------------------------------------


def test_offline_is_timer_driven_and_back_online_says_how_long():
    engine = AlertEngine()
    assert engine.next_deadline() is None
    assert engine.host_seen(H, 100.0, 5.0) == []
    assert engine.next_deadline() == 130.0  # max(3 x 5 s, 30 s)
    engine.observe(H, 110.0, {"cpu": 1}, 110.0)
    assert engine.tick(135.0) == []  # it was seen at 110
    assert engine.next_deadline() == 140.0
    assert engine.tick(140.0) == [Offline(H, 110.0, 140.0)]
    assert engine.tick(1000.0) == [] and engine.next_deadline() is None
    assert engine.observe(H, 1000.0, {"cpu": 1}, 1010.0) == [BackOnline(H, 900.0, 1010.0)]
    assert engine.next_deadline() == 1040.0


@pytest.mark.parametrize("interval, rule, delay", [
    (5.0, None, 30.0), (20.0, None, 60.0), (1.0, None, 30.0), (5.0, OfflineRule(H, 120.0), 120.0),
    (60.0, OfflineRule(H, 30.0), 120.0),  # never under two intervals
])
def test_offline_delay(interval, rule, delay):
    engine = AlertEngine([] if rule is None else [rule])
    engine.host_seen(H, 0.0, interval)
    assert engine.next_deadline() == delay
    assert engine.host_status(H).delay == delay


def test_shorter_delay_takes_effect_at_once_and_disabled_is_silent():
    engine = AlertEngine()
    engine.host_seen(H, 0.0, 60.0)
    assert engine.next_deadline() == 180.0
    engine.set_rule(OfflineRule(H, 120.0))
    assert engine.next_deadline() == 120.0
    assert engine.delete_rule(H, "offline") is True
    assert engine.delete_rule(H, "offline") is False
    assert engine.tick(1000.0) == []
    assert engine.host_status(H).offline_since == 0.0  # still tracked quietly
    assert engine.observe(H, 1000.0, {}, 1000.0) == []
    assert engine.rules(H) == [OfflineRule(H, enabled=False)]
    engine.set_rule(OfflineRule(H))  # the default again
    assert engine.rules(H) == []


def test_start_time_counts_as_seen_so_a_restart_reports_nobody_offline():
    engine = AlertEngine(now=5000.0)
    engine.add_host(H, last_seen=100.0, interval=5.0)
    engine.add_host(2, last_seen=4990.0, interval=5.0)
    engine.add_host(3)  # never seen: no offline alert
    # Not before the agents had their chance to come back (START_GRACE, 90 s; the delay alone is 30 s).
    assert engine.tick(5089.0) == []
    assert engine.tick(5090.0) == [Offline(H, 100.0, 5090.0), Offline(2, 4990.0, 5090.0)]


def test_reminders_are_held_while_offline_and_alerts_do_not_storm():
    engine = AlertEngine([CPU90, AlertRule(H, "ram", 50.0)], repeat=600.0)
    feed = Feed(engine)
    assert kinds(feed.sample(cpu=95, ram=60)) == ["Firing", "Firing"]
    feed.advance(feed.t + 3600.0)  # silence: one Offline, no reminders
    assert kinds(feed.events) == ["Firing", "Firing", "Offline"]
    back = feed.sample(cpu=95, ram=60)
    assert kinds(back) == ["BackOnline"] and back[0].down_for == 3605.0
    resumed = feed.t
    while feed.t < resumed + 600:
        feed.sample(cpu=95, ram=60)
    assert [t - resumed for t, e in feed.times if isinstance(e, Reminder)] == [600.0, 600.0]


# --- late samples (a spool replayed after an outage) ---------------------------------------------------------------


def test_replay_after_outage_reports_only_what_still_fires():
    engine = AlertEngine([CPU90, AlertRule(H, "ram", 90.0)])
    feed = Feed(engine)
    feed.sample(cpu=10, ram=10)
    down_at = feed.t
    feed.advance(down_at + 600.0)
    assert kinds(feed.events) == ["Offline"]
    now = feed.t
    events = []
    # The replay: a CPU incident that began and ended during the outage, RAM that filled up and stays full.
    for i in range(1, 100):
        ts = down_at + 5.0 * i
        cpu = 95.0 if 10 <= i < 20 else 10.0
        events += engine.observe(H, ts, {"cpu": cpu, "ram": 95.0 if i > 50 else 10.0}, now)
    assert kinds(events) == ["BackOnline"]
    fresh = engine.observe(H, now, {"cpu": 10.0, "ram": 95.0}, now + 0.2)
    assert [(type(e).__name__, e.series, e.since) for e in fresh] == [("Firing", "ram", down_at + 255.0)]


def test_resolve_of_an_announced_alert_is_sent_even_from_a_replay():
    engine = AlertEngine([CPU90])
    feed = Feed(engine)
    feed.sample(cpu=95)
    down_at = feed.t
    feed.advance(down_at + 600.0)
    events = [e for i in (1, 2, 3) for e in engine.observe(H, down_at + 5 * i, {"cpu": 10.0}, feed.t)]
    assert kinds(events) == ["BackOnline", "Resolved"]


def test_an_agent_clock_behind_is_not_taken_for_a_replay():
    engine = AlertEngine([CPU90])
    for i in range(10):
        now = 1000.0 + 5 * i
        events = engine.observe(H, now - 900.0, {"cpu": 95.0 if i == 9 else 10.0}, now)
    assert kinds(events) == ["Firing"]


def test_missing_series_cancel_pending_and_resolve_firing_after_the_delay():
    engine = AlertEngine([AlertRule(H, "disk", 90.0), AlertRule(H, "gpu", 90.0, False, 60.0)], repeat=0)
    engine.host_seen(H, 0, 5.0)
    assert kinds(engine.observe(H, 0, {"disk:/mnt": 95, "gpu0": 95}, 0)) == ["Firing"]
    assert engine.states(H)[1].state == "pending"
    for ts in range(5, 35, 5):
        assert engine.observe(H, ts, {"disk:/": 1}, ts) == []
    assert [s.state for s in engine.states(H) if s.series == "gpu0"] == []
    events = engine.observe(H, 35, {"disk:/": 1}, 35)
    assert events == [Resolved(AlertRule(H, "disk", 90.0), H, "disk:/mnt", None, 0, 0, worst=95)]
    assert [s.series for s in engine.states(H)] == ["disk:/", None]


# --- mute --------------------------------------------------------------------------------------------------------


def test_mute_suppresses_and_reports_what_still_fires_when_it_ends():
    engine = AlertEngine([CPU90, AlertRule(H, "ram", 90.0), AlertRule(H, "swap", 50.0)], repeat=600.0)
    feed = Feed(engine)
    assert kinds(feed.sample(cpu=95, ram=10, swap=10)) == ["Firing"]
    engine.mute(H, feed.t + 300.0)
    mute_end = feed.t + 300.0
    assert feed.sample(cpu=95, ram=95, swap=95) == []  # ram and swap fire silently
    feed.sample(cpu=95, ram=95, swap=10)
    feed.sample(cpu=95, ram=95, swap=10)  # swap resolved silently
    while feed.t < mute_end + 5:
        feed.sample(cpu=95, ram=95, swap=10)
    (ended,) = [(t, e) for t, e in feed.times if isinstance(e, MuteEnded)]
    assert ended[0] == mute_end
    assert sorted(f.series for f in ended[1].still_firing) == ["cpu", "ram"]
    assert kinds(feed.events) == ["Firing", "MuteEnded"]  # no reminder while muted
    while feed.t < mute_end + 600:
        feed.sample(cpu=95, ram=95, swap=10)
    assert [t - mute_end for t, e in feed.times if isinstance(e, Reminder)] == [600.0, 600.0]
    feed.sample(cpu=95, ram=10, swap=10)
    assert kinds(feed.sample(cpu=95, ram=10, swap=10)) == ["Resolved"]  # announced in MuteEnded: resolved aloud


def test_unmute_and_offline_while_muted():
    engine = AlertEngine([CPU90])
    feed = Feed(engine)
    feed.sample(cpu=95)
    engine.mute(H, feed.t + 10_000)
    feed.advance(feed.t + 100)
    assert kinds(feed.events) == ["Firing"]  # offline while muted: quiet
    (ended,) = engine.unmute(H, feed.t)
    assert ended.offline_since == feed.t - 100 and [f.series for f in ended.still_firing] == ["cpu"]
    assert engine.unmute(H, feed.t) == []
    assert kinds(feed.sample(cpu=95)) == ["BackOnline"]  # the user was told it is offline


def test_back_online_during_a_mute_is_quiet():
    engine = AlertEngine()
    feed = Feed(engine)
    feed.advance(feed.t + 100)
    engine.mute(H, feed.t + 50)
    assert feed.sample() == []
    feed.advance(feed.t + 50)
    assert kinds(feed.events) == ["Offline", "MuteEnded"]


# --- rules -------------------------------------------------------------------------------------------------------


def test_replacing_a_rule_keeps_its_state_and_deleting_is_silent():
    engine = AlertEngine([CPU90])
    assert kinds(engine.observe(H, 0, {"cpu": 95}, 0)) == ["Firing"]
    engine.set_rule(AlertRule(H, "cpu", 92.0))
    assert engine.observe(H, 1, {"cpu": 95}, 1) == []  # no second Firing
    engine.observe(H, 2, {"cpu": 80}, 2)
    (resolved,) = engine.observe(H, 3, {"cpu": 80}, 3)
    assert resolved.rule.threshold == 92.0
    engine.observe(H, 4, {"cpu": 95}, 4)
    assert engine.delete_rule(H, "cpu") is True and engine.delete_rule(H, "cpu") is False
    assert engine.observe(H, 5, {"cpu": 10}, 5) == [] and engine.states(H) == []


def test_states_listing():
    engine = AlertEngine([AlertRule(H, "cpu", 90.0, False, 60.0), AlertRule(H, "disk", 90.0),
                          AlertRule(2, "gpu", 90.0)])
    engine.observe(H, 10, {"cpu": 95, "disk:/": 95, "disk:/home": 5}, 10)
    rows = [(s.rule.metric, s.series, s.state, s.since, s.value) for s in engine.states()]
    assert rows == [("cpu", "cpu", "pending", 10, 95), ("disk", "disk:/", "firing", 10, 95),
                    ("disk", "disk:/home", "ok", None, 5), ("gpu", None, "ok", None, None)]


def test_forget_host():
    engine = AlertEngine([CPU90])
    engine.observe(H, 0, {"cpu": 95}, 0)
    engine.forget_host(H)
    assert engine.tick(10_000) == [] and engine.next_deadline() is None and engine.rules() == []


# --- restart -----------------------------------------------------------------------------------------------------


def test_restart_neither_repeats_nor_forgets_a_firing_alert():
    rules = [CPU90, AlertRule(H, "disk", 90.0)]
    engine = AlertEngine(rules, repeat=600.0)
    feed = Feed(engine)
    assert kinds(feed.sample(cpu=95, **{"disk__": 95})) == ["Firing", "Firing"]
    fired = feed.t
    snapshot = json.loads(json.dumps(engine.snapshot()))
    restored = AlertEngine.restore(snapshot, rules, now=fired + 20, repeat=600.0)
    feed2 = Feed(restored, t=fired + 20)
    while feed2.t < fired + 600:
        assert feed2.sample(cpu=95, **{"disk__": 95}) == []  # no second Firing
    # The reminders keep their schedule across the restart.
    assert [(t, e.series) for t, e in feed2.times] == [(fired + 600, "cpu"), (fired + 600, "disk:/")]
    feed2.sample(cpu=95, **{"disk__": 10})
    events = feed2.sample(cpu=95, **{"disk__": 10})
    assert [(type(e).__name__, e.series, e.since) for e in events] == [("Resolved", "disk:/", fired)]


def test_restore_drops_deleted_rules_and_hosts_and_ignores_other_versions():
    engine = AlertEngine([CPU90, AlertRule(2, "cpu", 90.0)])
    engine.observe(H, 0, {"cpu": 95}, 0)
    engine.observe(2, 0, {"cpu": 95}, 0)
    snapshot = engine.snapshot()
    restored = AlertEngine.restore(snapshot, [AlertRule(2, "cpu", 90.0)], hosts=[2])
    assert [(s.rule.host_id, s.state) for s in restored.states()] == [(2, "firing")]
    assert restored.host_status(H).last_seen is None
    assert AlertEngine.restore({"v": 99}, [CPU90]).states()[0].state == "ok"


ops = st.lists(st.one_of(
    st.tuples(st.just("sample"), st.sampled_from([1.0, 5.0, 5.0, 40.0, 700.0]),
              st.sampled_from([10.0, 89.0, 91.0, 95.0]), st.sampled_from([10.0, 95.0, None])),
    st.tuples(st.just("tick"), st.sampled_from([10.0, 100.0, 1000.0])),
    st.tuples(st.just("mute"), st.sampled_from([50.0, 500.0])),
    st.tuples(st.just("unmute")),
), max_size=40)


@settings(max_examples=150)
@given(ops, ops)
def test_snapshot_restore_behaves_like_never_stopping(before, after):
    rules = [AlertRule(H, "cpu", 90.0, False, 10.0), AlertRule(H, "disk", 90.0), OfflineRule(H, 60.0)]
    engines = [AlertEngine(rules, repeat=300.0)]
    clock = [1000.0]

    def run(engine, op, now):
        kind = op[0]
        if kind == "sample":
            series = {"cpu": op[2]} | ({} if op[3] is None else {"disk:/": op[3]})
            return engine.observe(H, now, series, now)
        if kind == "tick":
            return engine.tick(now)
        if kind == "mute":
            engine.mute(H, now + op[1])
            return []
        return engine.unmute(H, now)

    def step(op):
        if op[0] in ("sample", "tick"):
            clock[0] += op[1]
        outs = [run(engine, op, clock[0]) for engine in engines]
        assert all(sorted(map(repr, out)) == sorted(map(repr, outs[0])) for out in outs)

    for op in before:
        step(op)
    snapshot = json.loads(json.dumps(engines[0].snapshot()))
    engines.append(AlertEngine.restore(snapshot, rules, repeat=300.0))
    for op in after:
        step(op)


# --- messages ----------------------------------------------------------------------------------------------------


def test_describe():
    cpu = AlertRule(H, "cpu", 90.0, False, 300.0)
    assert describe(Firing(cpu, H, "cpu", 97.0, 0.0, 300.0), "box1") == "box1: CPU 97 % for 5 min (threshold 90 %)"
    assert describe(Firing(CPU90, H, "cpu", 97.25, 0.0, 0.0), "box1") == "box1: CPU 97.2 % (threshold 90 %)"
    assert describe(Resolved(cpu, H, "cpu", 62.0, 0.0, 720.0), "box1") == "box1: CPU back to normal (62 %) after 12 min"
    assert (describe(Reminder(cpu, H, "cpu", 95.0, 0.0, 3900.0), "box1")
            == "box1: CPU still 95 % after 1 h 5 min (threshold 90 %)")
    assert describe(Offline(H, 0.0, 120.0), "box1") == "box1 is offline (last seen 2 min ago)"
    assert describe(BackOnline(H, 840.0, 0.0), "box1") == "box1 is back online after 14 min"
    disk = AlertRule(H, "disk:/home", 10.0, True)
    assert (describe(Firing(disk, H, "disk:/home", 5.0, 0.0, 90000.0), "b")
            == "b: disk /home 5 % for 1 d 1 h (threshold below 10 %)")
    assert describe(Resolved(disk, H, "disk:/home", None, 0.0, 60.0), "b") == (
        "b: disk /home is no longer reported; alert closed after 1 min")
    net = AlertRule(H, "net_down", 10 * 1024**2)
    assert describe(Firing(net, H, "net_rx", 13107200.0, 0, 0), "b") == "b: download 12.5 MiB/s (threshold 10 MiB/s)"
    temp = AlertRule(H, "gputemp", 85.0)
    assert (describe(Firing(temp, H, "gputemp1", 91.0, 0, 30), "b")
            == "b: GPU 1 temperature 91 °C for 30 s (threshold 85 °C)")
    load = AlertRule(H, "load", 4.0)
    assert describe(Firing(load, H, "load1", 4.256, 0, 0), "b") == "b: load 4.26 (threshold 4)"
    assert alert_text.series_label("temp:coretemp") == "temperature coretemp"
    assert alert_text.series_label("vram0") == "VRAM 0"
    ended = MuteEnded(H, 600.0, (Firing(cpu, H, "cpu", 97.0, 0.0, 590.0),), offline_since=480.0)
    assert describe(ended, "box1") == ("box1: notifications are back on.\nIt is offline (last seen 2 min ago).\n"
                                       "Still firing:\n- CPU 97 % for 9 min 50 s (threshold 90 %)")
    assert describe(MuteEnded(H, 0.0, ()), "box1") == "box1: notifications are back on.\nNothing is firing."


# --- ack and the worst value (the Ack button; the edited message of an alert that ended) --------------------------


def test_ack_stops_reminders_until_it_resolves_and_survives_a_restart():
    engine = AlertEngine([CPU90, AlertRule(H, "ram", 50.0)], repeat=60.0)
    feed = Feed(engine)
    assert kinds(feed.sample(cpu=95, ram=60)) == ["Firing", "Firing"]
    assert not engine.ack(H, "cpu", "nope") and not engine.ack(H, "disk", "cpu") and not engine.ack(2, "cpu", "cpu")
    assert engine.ack(H, "cpu", "cpu")
    restored = AlertEngine.restore(json.loads(json.dumps(engine.snapshot())), engine.rules(), now=feed.t,
                                   repeat=60.0)
    for live in (engine, restored):
        feed = Feed(live, t=feed.t) if live is restored else feed
        start = feed.t
        while feed.t < start + 200:
            feed.sample(cpu=95, ram=60)
        # Only the alert that was not acked reminds, and a mute ending does not bring the acked one back.
        assert {e.series for e in feed.events if isinstance(e, Reminder)} == {"ram"}
        live.mute(H, feed.t + 1)
        feed.sample(cpu=95, ram=60)
        before = len(feed.events)
        while feed.t < start + 400:
            feed.sample(cpu=95, ram=60)
        assert {e.series for e in feed.events[before:] if isinstance(e, Reminder)} == {"ram"}
    # It still resolves; the next time it fires, it reminds again.
    feed.sample(cpu=10, ram=60)
    assert kinds(feed.sample(cpu=10, ram=60)) == ["Resolved"]
    assert not restored.ack(H, "cpu", "cpu")  # not firing
    assert kinds(feed.sample(cpu=95, ram=60)) == ["Firing"]
    before = len(feed.events)
    start = feed.t
    while feed.t < start + 70:
        feed.sample(cpu=95, ram=60)
    assert {e.series for e in feed.events[before:] if isinstance(e, Reminder)} == {"cpu", "ram"}


@settings(max_examples=100)
@given(st.lists(st.floats(91, 100), min_size=1, max_size=20), st.booleans())
def test_resolved_says_the_worst_value_even_across_a_restart(over, restart):
    engine = AlertEngine([CPU90, AlertRule(H, "disk:/", 10.0, below=True)])
    feed = Feed(engine)
    for value in over:
        feed.sample(cpu=value, disk__=100 - value)  # disk free: the lower the worse
    if restart:
        engine = AlertEngine.restore(json.loads(json.dumps(engine.snapshot())), engine.rules(), now=feed.t)
        feed = Feed(engine, t=feed.t)
    feed.sample(cpu=10, disk__=50)
    resolved = {e.series: e for e in feed.sample(cpu=10, disk__=50)}
    assert resolved["cpu"].worst == max(over)
    assert resolved["disk:/"].worst == 100 - max(over)
    text = alert_text.ended(resolved["cpu"], "box1")
    assert text.startswith("✅ box1: CPU back to normal (10 %) after ")
    assert f"; worst {alert_text.format_value('cpu', max(over))} (threshold 90 %)" in text
    assert alert_text.ended(BackOnline(H, 125.0, 0.0), "box1") == "✅ box1 was offline for 2 min 5 s; back online"
