"""Snapshots: the frame (protocol), the change events (mbot.snapshots), the latest per host and kind (store, writer),
and the real server over real TLS, with the attacks next to the uses."""
from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st
import trio
import trio_websocket

from helpers import (BASE_TS, ack_reaching, add_host, hello_frame, read_db, receive_json, sample_frame)
from test_hostile import closed_with, good  # noqa: F401 (good: the fixture of a well-behaved agent)
from mbot import limits, protocol, snapshots, store
from mbot.protocol import ProtocolError, SnapshotKind
from mbot.snapshots import Appeared, Disappeared, StateChanged
from mbot.writer import Writer


def proc(pid: int, name: str = "nginx", **extra) -> dict:
    return {"pid": pid, "name": name, "user": "www", "cmd": f"{name} -g daemon off;", "cpu": 1.5,
            "rss": 50 << 20, **extra}


def snapshot_frame(*items: dict, kind: str = "processes", v: int = 1, ts: float = BASE_TS, **extra) -> str:
    return json.dumps({"type": "snapshot", "kind": kind, "v": v, "ts": ts, "items": list(items), **extra})


def parse(*items: dict, **kwargs) -> protocol.Snapshot:
    frame = protocol.parse_agent_frame(snapshot_frame(*items, **kwargs))
    assert isinstance(frame, protocol.Snapshot)
    return frame


def refused(frame: str, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_agent_frame(frame, **kwargs)
    return info.value


# --- the frame -----------------------------------------------------------------------------------------------------


def test_a_processes_snapshot_is_validated_and_normalised():
    snap = parse(proc(1, "systemd", user="root", cpu=0, rss=12_000_000, threads=3), {"pid": 7, "name": "x",
                                                                                      "cpu": 2, "rss": 0})
    assert snap.kind == "processes" and snap.v == 1 and snap.ts == BASE_TS
    assert snap.items[0] == {"pid": 1, "name": "systemd", "user": "root", "cmd": "systemd -g daemon off;",
                             "cpu": 0.0, "rss": 12_000_000.0}  # an unknown field (threads) is left out
    assert snap.items[1] == {"pid": 7, "name": "x", "user": "", "cmd": "", "cpu": 2.0, "rss": 0.0}
    assert json.loads(snap.items_json) == list(snap.items)
    assert parse().items == ()  # an empty list is a list (nothing matched, a container host with none)


def test_labels_are_cleaned_and_cut_never_refused():
    snap = parse(proc(1, "evil\nCRITICAL forged", user="u" * 100, cmd="/bin/sh -c '" + "x" * 2000 + "'"))
    item = snap.items[0]
    assert item["name"] == "evil\ufffdCRITICAL forged"
    assert len(item["user"]) == limits.MAX_PROCESS_USER and item["user"].endswith("…")
    assert len(item["cmd"]) == limits.MAX_PROCESS_CMD


@pytest.mark.parametrize("item, where", [
    ({"name": "x", "cpu": 1, "rss": 1}, "pid"),
    (proc(-1), "pid"),
    (proc(2**32 + 1), "pid"),
    (proc(True), "pid"),
    (proc(1.5), "pid"),
    (proc(1, cpu=-1), "cpu"),
    (proc(1, cpu="high"), "cpu"),
    (proc(1, cpu=None), "cpu"),
    (proc(1, rss=2.0**61), "rss"),
    (proc(1, name=5), "name"),
    (proc(1, cmd=["ls", "-l"]), "cmd"),
    ("a string", "items[0]"),
])
def test_bad_fields_are_refused_with_1007(item, where):
    error = refused(snapshot_frame(item))
    assert error.close_code == protocol.CLOSE_INVALID and where in error.reason


process_values = st.one_of(st.integers(-5, 2**54), st.floats(allow_nan=True), st.booleans(), st.none(),
                           st.text(max_size=8), st.sampled_from(["nginx", "a\tb", "\ud800"]))


def near(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, good, good, process_values)


def texts(limit: int) -> st.SearchStrategy:
    return st.text(max_size=12) | st.sampled_from(["x" * limit, "x" * (limit + 1), "\u0434" * limit])


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries(
    {"pid": near(st.integers(0, 2**33)), "name": near(texts(limits.MAX_PROCESS_NAME)),
     "user": near(texts(limits.MAX_PROCESS_USER)), "cmd": near(texts(limits.MAX_PROCESS_CMD)),
     "cpu": near(st.floats(0, 900)), "rss": near(st.integers(0, 2**54))},
    optional={"vram": near(st.floats(0, 1e10)), "threads": st.integers()}), st.sampled_from([None, 1, 8]))
def test_the_short_check_of_a_process_agrees_with_the_full_one(raw, cores):
    def outcome(check):
        try:
            return check(raw, "p", cores)
        except ProtocolError as exc:
            return exc.reason
    assert outcome(protocol._process) == outcome(protocol._process_checked)
    assert protocol._process(proc(1), "p", 8) == protocol._process_checked(proc(1), "p", 8)  # the short way


def test_cpu_is_bounded_by_the_cores_the_hello_announced():
    assert parse(proc(1, cpu=6400.0)).items[0]["cpu"] == 6400.0  # no hello count: up to 1,024 cores
    assert protocol.parse_agent_frame(snapshot_frame(proc(1, cpu=399.0)), cores=4).items[0]["cpu"] == 399.0
    assert refused(snapshot_frame(proc(1, cpu=401.0)), cores=4).close_code == protocol.CLOSE_INVALID


def test_structure_bounds():
    too_many = [proc(i) for i in range(limits.MAX_SNAPSHOT_ITEMS + 1)]
    assert refused(snapshot_frame(*too_many)).close_code == protocol.CLOSE_POLICY
    assert len(parse(*too_many[:-1]).items) == limits.MAX_SNAPSHOT_ITEMS
    # 500 members with 512-character command lines: about 300 KiB stored, over the bound.
    big = [proc(i, cmd="c" * 600) for i in range(limits.MAX_SNAPSHOT_ITEMS)]
    error = refused(snapshot_frame(*big))
    assert error.close_code == protocol.CLOSE_POLICY and "KiB" in error.reason
    assert refused(snapshot_frame(proc(1), proc(1))).close_code == protocol.CLOSE_INVALID  # same pid+name twice
    parse(proc(1, "a"), proc(1, "b"))  # a pid reused by another name: two members
    for bad in ({"items": {}}, {"items": None}, {"ts": "now"}, {"ts": 5.0}, {"kind": 3}):
        frame = json.loads(snapshot_frame(proc(1)))
        frame.update(bad)
        assert refused(json.dumps(frame)).close_code == protocol.CLOSE_INVALID, bad


def test_unknown_kinds_and_versions_are_not_parsed():
    frame = protocol.parse_agent_frame(snapshot_frame({"schedule": "@daily"}, kind="cronjobs"))
    assert frame == protocol.UnknownSnapshot("cronjobs", 1)
    frame = protocol.parse_agent_frame(snapshot_frame("anything", v=2))
    assert frame == protocol.UnknownSnapshot("processes", 2)
    frame = protocol.parse_agent_frame(snapshot_frame(kind="x\n" * 100, v=True))
    assert isinstance(frame, protocol.UnknownSnapshot) and len(frame.kind) == 40 and frame.v is None


# --- change events -------------------------------------------------------------------------------------------------

UNITS = SnapshotKind("units", 1, key=("name",), state="state", item=lambda raw, where, cores: raw)


def test_first_snapshot_is_a_baseline():
    assert snapshots.diff(UNITS, None, [{"name": "a", "state": "active"}]) == []


def test_appeared_disappeared_and_state_changed():
    before = [{"name": "a", "state": "active"}, {"name": "b", "state": "active"}, {"name": "c", "state": "failed"}]
    after = [{"name": "c", "state": "failed"}, {"name": "a", "state": "failed"}, {"name": "d", "state": "active"}]
    assert snapshots.diff(UNITS, before, after) == [
        StateChanged(("a",), {"name": "a", "state": "failed"}, "active", "failed"),
        Appeared(("d",), {"name": "d", "state": "active"}),
        Disappeared(("b",), {"name": "b", "state": "active"}),
    ]
    assert snapshots.diff(UNITS, after, after) == []


def test_processes_are_matched_by_pid_and_name():
    kind = protocol.SNAPSHOT_KINDS["processes"]
    before = [proc(1, "init"), proc(100, "old")]
    after = [proc(1, "init", cpu=50.0), proc(100, "new")]  # pid 100 reused by another program
    events = snapshots.diff(kind, before, after)
    assert events == [Appeared((100, "new"), after[1]), Disappeared((100, "old"), before[1])]  # cpu is no state


def test_stored_versions_and_kinds():
    items = [proc(1)]
    assert snapshots.diff_stored("processes", (1, []), 1, items) == [Appeared((1, "nginx"), items[0])]
    assert snapshots.diff_stored("processes", (0, []), 1, items) == []  # another version: a baseline
    assert snapshots.diff_stored("processes", None, 1, items) == []
    assert snapshots.diff_stored("gone", (1, []), 1, items) == []
    assert snapshots.diff_stored("processes", (1, ["damaged", 3]), 1, items) == [Appeared((1, "nginx"), items[0])]


# --- the writer and the store --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, list]] = []

    def on_snapshot(self, host_id, kind, events):
        self.calls.append((host_id, kind, events))


class Broken:
    def on_snapshot(self, host_id, kind, events):
        raise RuntimeError("a listener bug")


async def test_writer_keeps_the_latest_and_tells_listeners_what_changed(settings, nursery):
    key = add_host(settings, "box1")
    writer = Writer(settings.db_path)
    recorder = Recorder()
    writer.snapshot_listeners.extend([Broken(), recorder])  # one listener failing does not stop the next
    nursery.start_soon(writer.run)

    async def write(*items):
        await writer.snapshot(key.host_id, parse(*items, ts=BASE_TS + len(recorder.calls)))
        await writer.call(lambda conn: None)  # the snapshot committed in this batch or an earlier one

    await write(proc(1, "init"), proc(2, "sshd"))
    assert recorder.calls == []  # the first one is a baseline
    await write(proc(1, "init"), proc(3, "cron"))
    assert recorder.calls == [(key.host_id, "processes", [Appeared((3, "cron"), parse(proc(3, "cron")).items[0]),
                                                          Disappeared((2, "sshd"), proc(2, "sshd") | {"cpu": 1.5})])]
    await write(proc(1, "init"), proc(3, "cron"))
    assert len(recorder.calls) == 1  # nothing changed: nobody is told
    assert writer.committed_snapshots == 3 and writer.faults.counts["alerting"] == 1

    conn = store.connect(settings.db_path, readonly=True)
    try:
        latest = store.latest_snapshot(conn, key.host_id, "processes")
        assert latest is not None and (latest.v, latest.ts) == (1, BASE_TS + 1)
        assert [(i["pid"], i["name"]) for i in latest.items] == [(1, "init"), (3, "cron")]
        assert [s.kind for s in store.snapshots_of_host(conn, key.host_id)] == ["processes"]
        assert store.latest_snapshot(conn, key.host_id, "containers") is None
    finally:
        conn.close()
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(1,)]  # replaced, not appended
    writer.close()


async def test_a_listener_is_told_against_what_the_store_holds(settings, nursery):
    # Nobody listens (the server as it is): snapshots are stored without a diff. A server started later with a
    # listener compares the next one with the stored one, as with every one before it.
    key = add_host(settings, "box1")
    first = Writer(settings.db_path)
    nursery.start_soon(first.run)
    await first.snapshot(key.host_id, parse(proc(1, "init")))
    await first.snapshot(key.host_id, parse(proc(1, "init"), proc(2, "sshd")))
    await first.call(lambda conn: None)
    first.close()
    second, recorder = Writer(settings.db_path), Recorder()
    second.snapshot_listeners.append(recorder)
    nursery.start_soon(second.run)
    await second.snapshot(key.host_id, parse(proc(1, "init"), proc(3, "cron")))
    await second.call(lambda conn: None)
    assert recorder.calls == [(key.host_id, "processes", [Appeared((3, "cron"), parse(proc(3, "cron")).items[0]),
                                                          Disappeared((2, "sshd"), proc(2, "sshd") | {"cpu": 1.5})])]
    second.close()


async def test_snapshot_of_a_deleted_host_is_dropped(settings, nursery):
    key = add_host(settings, "box1")
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    await writer.snapshot(key.host_id, parse(proc(1)))
    await writer.call(store.delete_host, key.host_id)  # deletes its snapshots too
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(0,)]
    await writer.snapshot(key.host_id, parse(proc(1)))
    await writer.call(lambda conn: None)
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(0,)]
    writer.close()


def test_a_damaged_stored_snapshot_reads_as_empty(settings, caplog):
    key = add_host(settings, "box1")
    conn = store.connect(settings.db_path)
    try:
        store.put_snapshot(conn, key.host_id, "processes", 1, BASE_TS, BASE_TS, "{not json")
        latest = store.latest_snapshot(conn, key.host_id, "processes")
        assert latest is not None and latest.items == [] and "damaged" in caplog.text
        store.put_snapshot(conn, key.host_id, "processes", 1, BASE_TS, BASE_TS, '[{"pid": 1}, 2, "x"]')
        assert store.latest_snapshot(conn, key.host_id, "processes").items == [{"pid": 1}]
    finally:
        conn.close()


def test_the_snapshots_table_comes_with_a_migration(tmp_path):
    store.connect(tmp_path / "db.sqlite3").close()
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(snapshots)")]
        assert columns == ["host_id", "kind", "v", "ts", "received", "items"]
    finally:
        conn.close()


# --- the real server, over real TLS --------------------------------------------------------------------------------


async def agent(settings, connect, name, **hello):
    key = add_host(settings, name)
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(**hello))
    await receive_json(ws)
    return key, ws


async def test_an_agent_sends_snapshots_beside_its_samples(server, settings, connect):
    recorder = Recorder()
    server.writer.snapshot_listeners.append(recorder)
    key, ws = await agent(settings, connect, "box1", cpu_count=4)
    await ws.send_message(snapshot_frame(proc(1, "init"), proc(812, "postgres", cpu=350.0)))
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)  # frames of one connection are committed in order: the snapshot is in
    await ws.send_message(snapshot_frame(proc(1, "init"), ts=BASE_TS + 5))
    await ws.send_message(sample_frame(2))
    await ack_reaching(ws, 2)
    (kind, ts, items), = read_db(settings, "SELECT kind, ts, items FROM snapshots WHERE host_id = ?", key.host_id)
    assert (kind, ts, [i["pid"] for i in json.loads(items)]) == ("processes", BASE_TS + 5, [1])
    assert [(h, k, [type(e).__name__ for e in events]) for h, k, events in recorder.calls] == [
        (key.host_id, "processes", ["Disappeared"])]


BAD_SNAPSHOTS = [
    ("too many", snapshot_frame(*[proc(i) for i in range(limits.MAX_SNAPSHOT_ITEMS + 1)]), protocol.CLOSE_POLICY),
    ("oversized", snapshot_frame(*[proc(i, cmd="c" * 600) for i in range(500)]), protocol.CLOSE_POLICY),
    ("bad field", snapshot_frame(proc(1, rss=-5)), protocol.CLOSE_INVALID),
    ("cpu over the cores", snapshot_frame(proc(1, cpu=450.0)), protocol.CLOSE_INVALID),
    ("duplicate", snapshot_frame(proc(1), proc(1)), protocol.CLOSE_INVALID),
    ("not a list", json.dumps({"type": "snapshot", "kind": "processes", "v": 1, "ts": BASE_TS, "items": "all"}),
     protocol.CLOSE_INVALID),
]


@pytest.mark.parametrize("name, frame, code", BAD_SNAPSHOTS, ids=[b[0] for b in BAD_SNAPSHOTS])
async def test_bad_snapshots_close_only_their_connection(server, settings, connect, good, name, frame, code):
    key, ws = await agent(settings, connect, "bad", cpu_count=4)
    await ws.send_message(frame)
    assert await closed_with(ws) == code
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(0,)]
    await good()


async def test_unknown_kinds_are_ignored_and_the_connection_goes_on(server, settings, connect, good, caplog):
    _, ws = await agent(settings, connect, "newer")
    for i in range(20):  # new kind names do not buy new log lines
        await ws.send_message(snapshot_frame({"id": "abc", "image": "nginx"}, kind=f"containers{i}"))
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(0,)]
    lines = [r.getMessage() for r in caplog.records if "containers" in r.getMessage()]
    assert 1 <= len(lines) <= 3  # summarised per host
    await good()


async def test_a_snapshot_flood_is_closed_and_the_owner_told_once(server, settings, connect, good):
    told: list[tuple[str, str]] = []
    server.hub.on_limit = lambda host, limit, detail: told.append((host.name, limit))
    key = add_host(settings, "flood")
    for _ in range(2):  # reconnecting earns nothing
        ws = await connect(key.secret)
        await ws.send_message(hello_frame())
        await receive_json(ws)
        try:
            for _ in range(50):
                await ws.send_message(snapshot_frame(proc(1)))
        except trio_websocket.ConnectionClosed:
            pass
        assert await closed_with(ws) == protocol.CLOSE_POLICY
    assert told == [("flood", "snapshots")] and server.hub.limits_exceeded == {"snapshots": 2}
    assert read_db(settings, "SELECT count(*) FROM snapshots") == [(1,)]  # the ones within budget: the latest
    await good()
