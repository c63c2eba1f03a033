"""mbot.session.AgentSession driven directly: text frames and times in, actions out. No sockets, no clock."""
from __future__ import annotations

import json

import pytest

from mbot import limits, protocol
from mbot.protocol import Hello, Result, Snapshot
from mbot.session import AckPolicy, AgentSession, Close, GatherPolicy, Ignore, State, StoreSamples

from helpers import BASE_TS, hello_frame, load_agent, sample_frame

T0 = 1000.0  # the driver's clock (trio.current_time()): any origin
NO_GATHER = GatherPolicy(max_wait=0.0)  # acks as they were: no gathering asked, however many agents


def session(*, since: float = 0.0, interval_budgets: list[float] | None = None, **kwargs) -> AgentSession:
    """A session whose host was last seen `since` seconds ago (that is its sample credit)."""
    def sample_budget(interval: float) -> limits.SampleBudget:
        if interval_budgets is not None:
            interval_budgets.append(interval)
        return limits.SampleBudget(interval, since=BASE_TS - since, now=T0, wall_now=BASE_TS)

    return AgentSession(now=T0, sample_budget=sample_budget,
                        snapshot_budget=lambda interval: limits.SnapshotBudget(interval), **kwargs)


def opened(**kwargs) -> AgentSession:
    s = session(**kwargs)
    assert isinstance(s.receive(hello_frame(epoch=7), T0), Hello)
    assert json.loads(s.hello_stored(0))["seq"] == 0
    return s


def processes(*items: dict, ts: float = BASE_TS, kind: str = "processes", v: int = 1) -> str:
    return json.dumps({"type": "snapshot", "kind": kind, "v": v, "ts": ts, "items": list(items)})


def proc(pid: int, name: str = "nginx", **extra) -> dict:
    return {"pid": pid, "name": name, "user": "www", "cmd": f"{name} -g daemon", "cpu": 1.5, "rss": 1 << 20,
            **extra}


# --- the hello -----------------------------------------------------------------------------------------------------


def test_hello_first_then_samples():
    seen: list[float] = []
    s = session(interval_budgets=seen)
    assert s.state is State.AWAITING_HELLO and s.hello_deadline == T0 + 10
    action = s.receive(hello_frame(epoch=7, interval=2.0), T0 + 0.1)
    assert isinstance(action, Hello) and action.epoch == 7
    assert seen == [2.0]  # the host's budget was lent at the interval the hello announced
    assert s.state is State.OPEN and s.hello_deadline == float("inf")
    assert json.loads(s.hello_stored(3)) == {"type": "ack", "seq": 3}  # the first ack: what the server has
    action = s.receive(sample_frame(4), T0 + 0.2)
    assert isinstance(action, StoreSamples) and action.epoch == 7 and action.wait == 0
    assert [sample.seq for sample in action.samples.items] == [4]


@pytest.mark.parametrize("first", [sample_frame(1), processes(proc(1)),
                                   json.dumps({"type": "result", "id": "x", "ok": True})])
def test_the_first_frame_must_be_a_hello(first):
    s = session()
    action = s.receive(first, T0)
    assert action == Close(protocol.CLOSE_POLICY, "the first frame must be a hello")
    assert s.state is State.CLOSED
    assert s.receive(hello_frame(), T0) is None  # closed: nothing more is acted on


def test_hello_twice_is_an_error():
    s = opened()
    assert s.receive(hello_frame(epoch=8), T0 + 1) == Close(protocol.CLOSE_POLICY, "hello sent twice")


def test_no_hello_in_time():
    s = session()
    assert s.timeout(T0 + 5) is None  # woken early: nothing to do
    assert s.timeout(s.hello_deadline) == Close(protocol.CLOSE_POLICY, "no hello within 10 s")
    assert opened().timeout(T0 + 3600) is None


def test_a_bad_frame_closes_with_its_code():
    s = opened()
    action = s.receive("{not json", T0 + 1)
    assert isinstance(action, Close) and action.code == protocol.CLOSE_INVALID and action.limit is None
    s = session()
    action = s.receive(hello_frame(v=2), T0)
    assert isinstance(action, Close) and action.code == protocol.CLOSE_POLICY and "version" in action.reason


# --- limits --------------------------------------------------------------------------------------------------------


def test_a_frame_flood_is_closed_with_1008():
    s = opened(since=86400)  # plenty of sample credit: the frame rate is the limit here
    actions = [s.receive(sample_frame(seq), T0 + 1) for seq in range(1, 202)]
    assert all(isinstance(a, StoreSamples) for a in actions[:200])  # the burst
    assert actions[200] == Close(protocol.CLOSE_POLICY, "too many frames: over the per-connection rate limit")


def test_frames_at_the_allowed_rate_go_on_for_ever():
    s = opened(since=86400)
    for seq in range(1, 1001):
        assert isinstance(s.receive(sample_frame(seq), T0 + seq * 0.05), StoreSamples)  # 20 a second


def test_over_the_sample_budget_closes_with_the_limit():
    s = opened()  # interval 1 s, the host was last seen just now: a burst of 30 at most
    batch = json.dumps({"type": "samples", "samples": [json.loads(sample_frame(seq)) for seq in range(1, 101)]})
    action = s.receive(batch, T0 + 1)
    assert isinstance(action, Close) and action.code == protocol.CLOSE_POLICY and action.limit == "samples"
    assert action.reason.startswith("over the limit of samples: more samples than one per 1 s")


def test_a_fast_replay_is_slowed_down_not_refused():
    s = opened(since=7 * 86400)
    waits = []
    for first in range(1, 10_001, 1000):
        batch = [json.loads(sample_frame(seq)) for seq in range(first, first + 1000)]
        action = s.receive(json.dumps({"type": "samples", "samples": batch}), T0 + 1)
        assert isinstance(action, StoreSamples)
        waits.append(action.wait)
    assert waits[0] == 0 and waits[-1] > 0  # past 2,000 samples a second: read on more slowly


def test_the_writer_refusing_a_frame():
    assert opened().store_failed("new series names", "too many") == Close(
        protocol.CLOSE_POLICY, "over the limit of new series names: too many", "new series names", "too many")
    s = opened()
    action = s.store_failed()
    assert action.code == 1011 and action.quiet and s.state is State.CLOSED


# --- acks ----------------------------------------------------------------------------------------------------------


def test_acks_are_coalesced():
    s = opened()
    assert s.next_ack(T0) is None  # the hello's ack went out already
    assert s.committed(3) and s.committed(5)
    assert not s.committed(4)  # an older commit (another frame's callback) changes nothing
    assert s.next_ack(T0) == protocol.ack(5)  # one ack for everything committed since the last
    assert s.next_ack(T0) is None
    assert not s.committed(5)  # a replay acked as duplicates: nothing new
    assert s.next_ack(T0) is None


def test_the_hello_ack_starts_where_the_server_is():
    s = session()
    s.receive(hello_frame(), T0)
    assert s.hello_stored(42) == protocol.ack(42)
    assert not s.committed(40) and s.next_ack(T0) is None
    assert s.committed(43) and s.next_ack(T0) == protocol.ack(43)


def test_acks_are_paced_by_the_servers_ack_rate():
    # 1,000 agents at 100 acks/s: one ack per connection every 10 s, the first at once, each covering all before it.
    s = opened(acks=AckPolicy(rate=100.0, samples=1.0, max_wait=30.0), gather=NO_GATHER, connections=lambda: 1000)
    assert s.committed(1) and s.next_ack(T0) == protocol.ack(1)
    assert s.committed(2) and s.next_ack(T0 + 5) is None  # committed, but the connection was acked 5 s ago
    assert s.ack_pending and s.ack_at() == T0 + 10
    assert s.committed(3) and s.next_ack(T0 + 9.9) is None
    assert s.next_ack(T0 + 10) == protocol.ack(3)  # one ack for both
    assert not s.ack_pending and s.next_ack(T0 + 30) is None  # nothing new: nothing sent


def test_an_agent_waits_for_an_ack_at_most_max_wait():
    s = opened(acks=AckPolicy(rate=100.0, max_wait=30.0), gather=NO_GATHER, connections=lambda: 50_000)
    assert s.committed(1) and s.next_ack(T0) == protocol.ack(1)
    assert s.committed(2) and s.ack_at() == T0 + 30  # not 500 s
    assert s.next_ack(T0 + 30) == protocol.ack(2)


def test_a_handful_of_agents_is_acked_once_per_three_intervals():
    # A lone agent reads an ack per three of its samples instead of one per sample: its own CPU (issue 14).
    s = opened(acks=AckPolicy(rate=100.0, samples=3.0, max_wait=30.0), connections=lambda: 3)  # interval 1 s
    assert s.committed(1) and s.next_ack(T0 + 1) == protocol.ack(1)  # the first at once
    assert s.committed(2) and s.next_ack(T0 + 2) is None
    assert s.committed(3) and s.next_ack(T0 + 3.9) is None
    assert s.next_ack(T0 + 4) == protocol.ack(3)
    slow = session(acks=AckPolicy(rate=100.0, samples=3.0, max_wait=30.0), connections=lambda: 3)
    slow.receive(hello_frame(interval=60.0), T0)
    slow.hello_stored(0)
    assert slow.committed(1) and slow.next_ack(T0) == protocol.ack(1)
    assert slow.committed(2) and slow.ack_at() == T0 + 30  # never longer than max_wait, whatever the interval


def test_a_crowded_servers_acks_keep_its_agents_from_pinging():
    # The agent pings once the server has sent no message for ping_interval (the server's pings do not count): with
    # acks every 30 s, a third of them came just after its ping.
    ping_interval = load_agent().AgentConfig.__dataclass_fields__["ping_interval"].default
    # One process's policies at 6,000 agents: acks paced to 100 a second, gathering for the longest (15 s).
    s = session(gather=GatherPolicy.for_processes(1), connections=lambda: 6000)
    s.receive(hello_frame(interval=5.0), T0)
    gather = json.loads(s.hello_stored(0))["gather"]
    assert gather == 15.0
    acks, seq = [T0], 0
    for committed_at in [T0 + 2 + gather * k for k in range(40)]:  # each gathered frame committed 1 s after it left
        while s.ack_pending and s.ack_at() <= committed_at:  # the ack task's sleep until ack_at() ended first
            at = s.ack_at()
            assert s.next_ack(at) is not None
            acks.append(at)
        seq += 3
        assert s.committed(seq)
        if s.next_ack(committed_at) is not None:
            acks.append(committed_at)
    longest = max(b - a for a, b in zip(acks, acks[1:]))
    assert longest == AckPolicy().max_wait == 25.0
    assert longest + 3.0 < ping_interval  # room for a busy event loop's lag


def test_a_busy_server_asks_agents_to_gather_their_samples():
    agents = [3]
    s = session(gather=GatherPolicy(frames=250.0, max_wait=15.0), connections=lambda: agents[0])
    s.receive(hello_frame(interval=5.0), T0)
    assert s.hello_stored(0) == protocol.ack(0)  # a handful of agents: each sample at once
    agents[0] = 2500  # 10 s worth of frames at 250 a second: two samples of 5 s per frame
    assert s.committed(1) and json.loads(s.next_ack(T0)) == {"type": "ack", "seq": 1, "gather": 10.0}
    agents[0] = 50_000  # never longer than max_wait: the longest silence stays under the offline delay
    assert s.committed(2) and json.loads(s.next_ack(T0 + 30)) == {"type": "ack", "seq": 2, "gather": 15.0}
    agents[0] = 1000  # 4 s: shorter than the interval, so nothing to gather: the next ack says so
    assert s.committed(3) and s.next_ack(T0 + 60) == protocol.ack(3)
    fast = session(gather=GatherPolicy(frames=250.0, max_wait=15.0), connections=lambda: 1000)
    fast.receive(hello_frame(interval=1.0), T0)
    assert json.loads(fast.hello_stored(7)) == {"type": "ack", "seq": 7, "gather": 4.0}  # 1,000 agents at 1 s


def test_a_pending_ack_is_flushed_whatever_the_pace():
    # Before a close (shutdown, replacement, a refused frame) the agent hears what is committed.
    s = opened(acks=AckPolicy(rate=1.0, max_wait=30.0), gather=NO_GATHER, connections=lambda: 1000)
    assert s.committed(1) and s.next_ack(T0) == protocol.ack(1)
    assert s.committed(4) and s.next_ack(T0 + 1) is None
    assert s.flush_ack(T0 + 1) == protocol.ack(4)
    assert s.flush_ack(T0 + 1) is None


# --- commands ------------------------------------------------------------------------------------------------------


def result(command_id: str, ok: bool = True) -> str:
    return json.dumps({"type": "result", "id": command_id, "ok": ok, "message": "reboot started"})


def test_a_result_is_delivered_once():
    s = opened()
    s.command_sent("c1")
    action = s.receive(result("c1"), T0 + 1)
    assert isinstance(action, Result) and action.command_id == "c1" and action.ok
    again = s.receive(result("c1"), T0 + 2)  # a second answer to the same command
    assert isinstance(again, Ignore) and "never sent" in again.why


def test_a_result_for_an_unknown_command_is_ignored():
    s = opened()
    action = s.receive(result("nope"), T0 + 1)
    assert action == Ignore("result", "a result for command 'nope' it was never sent; ignored")
    assert s.state is State.OPEN  # the connection goes on
    s.command_sent("late")
    s.command_ended("late")  # the waiter gave up
    assert isinstance(s.receive(result("late"), T0 + 2), Ignore)


def test_pending_commands_are_bounded():
    s = opened()
    for i in range(100):
        s.command_sent(f"c{i}")
    assert len(s.pending_commands) <= 16 and "c99" in s.pending_commands


# --- snapshots -----------------------------------------------------------------------------------------------------


def test_a_snapshot_is_stored():
    s = opened()
    action = s.receive(processes(proc(1, "init"), proc(42)), T0 + 1)
    assert isinstance(action, Snapshot)
    assert action.kind == "processes" and [i["pid"] for i in action.items] == [1, 42]


@pytest.mark.parametrize("kind, v", [("cronjobs", 1), ("containers", 2), ("processes", None)])
def test_a_snapshot_of_an_unknown_kind_or_version_is_ignored(kind, v):
    s = opened()
    frame = {"type": "snapshot", "kind": kind, "ts": BASE_TS, "items": [{"anything": 1}]}
    if v is not None:
        frame["v"] = v
    action = s.receive(json.dumps(frame), T0 + 1)
    assert isinstance(action, Ignore) and kind in action.why and s.state is State.OPEN


def test_a_process_cpu_is_bounded_by_the_hello_cpu_count():
    s = session()
    s.receive(hello_frame(cpu_count=2), T0)
    assert isinstance(s.receive(processes(proc(1, cpu=199.0)), T0 + 1), Snapshot)  # two busy cores
    action = s.receive(processes(proc(1, cpu=250.0)), T0 + 2)
    assert isinstance(action, Close) and action.code == protocol.CLOSE_INVALID and "cpu" in action.reason


def test_snapshots_beyond_one_per_interval_are_closed_with_the_limit():
    s = opened()  # interval 1 s: a burst of 10, then 1.25 a second
    for i in range(10):
        assert isinstance(s.receive(processes(proc(1)), T0 + 1), Snapshot)
    action = s.receive(processes(proc(1)), T0 + 1)
    assert isinstance(action, Close) and action.limit == "snapshots" and action.code == protocol.CLOSE_POLICY


def test_snapshots_at_the_interval_go_on():
    s = opened()
    for i in range(1, 200):
        assert isinstance(s.receive(processes(proc(1)), T0 + i), Snapshot)


def test_gathering_starts_where_the_processes_serving_agents_are_full():
    """Each process serving agents takes FRAMES_PER_PROCESS sample frames a second before agents are asked to
    gather: one process asks 2,000 agents at 5 s to send every 5.7 s, three take 5,000 each sample on its own."""
    one, three = GatherPolicy.for_processes(1), GatherPolicy.for_processes(3)
    assert one.period(1_500, 5.0) == 0.0 and one.period(2_000, 5.0) == 5.7
    assert three.period(5_000, 5.0) == 0.0 and three.period(7_000, 5.0) == 6.7
    assert three.period(100_000, 5.0) == three.max_wait  # never past max_wait, however many
    assert GatherPolicy.for_processes(0).frames == GatherPolicy().frames  # at least the one process
