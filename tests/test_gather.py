"""A busy server asks its agents to gather samples (the `gather` field of an ack, mbot.session.GatherPolicy): what
any agent sees on the wire, the real agent sending several samples per frame and losing none, and an ack's
`gather` that is not a sane number of seconds changing nothing."""
from __future__ import annotations

import json

import pytest

from mbot.session import GatherPolicy

from helpers import (add_host, hello_frame, load_agent, open_raw_ws, read_db, receive_json, start_agent_object,
                     wait_for_samples)

agent = load_agent()


async def test_a_busy_server_says_so_in_its_acks(server, settings, nursery):
    # As if thousands of agents were connected: gather for 0.5 s (the policy's longest) at a 0.1 s interval.
    server.hub.gather_policy = GatherPolicy(frames=1e-6, max_wait=0.5)
    key = add_host(settings, "box1")
    ws = await open_raw_ws(nursery, server.port, key.secret)
    await ws.send_message(hello_frame(interval=0.1))
    assert await receive_json(ws) == {"type": "ack", "seq": 0, "gather": 0.5}
    await ws.aclose()


async def test_the_agent_gathers_samples_when_asked_and_loses_none(server, settings, nursery, tmp_path):
    server.hub.gather_policy = GatherPolicy(frames=1e-6, max_wait=0.4)
    key = add_host(settings, "box1")
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=server.port, interval=0.05,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    a = agent.Agent(config, agent.Collector(gpu=False))
    frames: list[int] = []  # the last seq of each frame of samples the agent sent
    sent = a.link.sent
    a.link.sent = lambda last_seq: (frames.append(last_seq), sent(last_seq))[1]
    scope = await start_agent_object(nursery, a)
    await wait_for_samples(server, settings, "box1", 20)
    scope.cancel()
    assert a.link.gather == 0.4
    seqs = [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
    sizes = [b - a for a, b in zip(frames, frames[1:])]
    assert len(frames) < len(seqs) / 3  # ~8 samples of 0.05 s in each 0.4 s frame: far fewer frames than samples
    assert max(sizes) >= 4


def test_a_gather_that_is_not_a_sane_number_of_seconds_means_at_once():
    link = agent.Link(agent.SampleBuffer(100))
    link.receive(json.dumps({"type": "ack", "seq": 0, "gather": 15}))
    assert link.gather == 15.0
    for hostile in (-1, 0, 61, 1e308, "15", True, None, [15], {"s": 15}):
        link.receive(json.dumps({"type": "ack", "seq": 0, "gather": 15}))
        link.receive(json.dumps({"type": "ack", "seq": 0, "gather": hostile}))
        assert link.gather == 0.0, hostile
    link.receive('{"type": "ack", "seq": 0, "gather": NaN}')  # Python's json reads it; a server could send it
    assert link.gather == 0.0
    link.receive(json.dumps({"type": "ack", "seq": 0, "gather": 2.5}))
    link.connected()  # a new connection: at once until its server asks again
    assert link.gather == 0.0


def test_link_figures_still_reach_gathered_frames():
    # A gathered frame is live (now's round trip belongs to its newest sample); a replay after a cut is not.
    from mbot import limits
    from mbot.session import AgentSession, StoreSamples

    from helpers import BASE_TS

    def samples(*seqs: int) -> str:
        return json.dumps({"type": "samples", "samples": [
            {"seq": q, "ts": BASE_TS + 5 * q, "metrics": {"cpu": 1.0}} for q in seqs]})

    s = AgentSession(now=0.0, sample_budget=lambda i: limits.SampleBudget(i, since=BASE_TS - 3600, now=0.0,
                                                                           wall_now=BASE_TS + 60),
                     snapshot_budget=lambda i: limits.SnapshotBudget(i),
                     gather=GatherPolicy(frames=1e-6, max_wait=15.0), connections=lambda: 5000)
    s.receive(hello_frame(interval=5.0), 0.0)
    assert json.loads(s.hello_stored(0))["gather"] == 15.0
    s.link.answered(s.link.next_at, s.link.next_at + 0.004)
    gathered = s.receive(samples(1, 2, 3, 4), 20.0)  # 15 s of 5 s samples, and one more
    assert isinstance(gathered, StoreSamples)
    assert gathered.samples.items[-1].metrics["link"]["rtt"] == pytest.approx(4.0)
    replay = s.receive(samples(*range(5, 15)), 40.0)
    assert isinstance(replay, StoreSamples) and "link" not in replay.samples.items[-1].metrics
