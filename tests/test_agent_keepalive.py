"""The agent's keepalive: no ping while the server's frames show the connection lives (acks every few intervals), a
ping after ping_interval of silence, and a path that silently went dead dropped after ping_interval + ping_timeout."""
from __future__ import annotations

import trio

from helpers import add_host, load_agent, read_db, start_agent_object, wait_for_samples
from tcpproxy import TcpProxy

agent = load_agent()


class CountingPings:
    """The connection's WebSocket as the keepalive uses it: ping() answered at once, counted."""

    def __init__(self) -> None:
        self.pings: list[float] = []

    async def ping(self) -> None:
        self.pings.append(trio.current_time())


async def test_no_ping_while_the_server_speaks_then_one_after_its_silence(tmp_path, autojump_clock):
    config = agent.AgentConfig(secret="s" * 32, server="127.0.0.1", port=1, fingerprint="0" * 64,
                               fingerprint_file=str(tmp_path / "fp.json"), ping_interval=30.0, ping_timeout=30.0)
    a = agent.Agent(config, agent.Collector(gpu=False))
    ws = CountingPings()
    conn = agent._Connection(ws=ws, cancel_scope=trio.CancelScope())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a._keepalive, conn, nursery.cancel_scope)
        for _ in range(20):  # an ack every 15 s for 5 minutes
            conn.heard_at = trio.current_time()
            await trio.sleep(15)
        assert ws.pings == []
        silent_since = conn.heard_at
        await trio.sleep(31)
        assert ws.pings == [silent_since + 30.0]  # the first ping 30 s after the server's last frame
        nursery.cancel_scope.cancel()


async def test_a_dead_path_is_noticed_by_the_keepalive_and_the_agent_reconnects(server, settings, nursery, tmp_path):
    key = add_host(settings, "box1")
    proxy = TcpProxy(server.port)
    port = await nursery.start(proxy.run)
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=port, interval=0.1,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                               ping_interval=0.15, ping_timeout=0.15, backoff_min=0.05, backoff_max=0.1,
                               quick_reconnect=(0.05, 0.1), fast_retry=(0.05, 0.1))
    a = agent.Agent(config, agent.Collector(gpu=False))
    scope = await start_agent_object(nursery, a)
    await wait_for_samples(server, settings, "box1", 3)
    stored = read_db(settings, "SELECT samples_count FROM hosts WHERE name = 'box1'")[0][0]
    assert proxy.freeze() == 1  # no FIN, no RST, nothing forwarded: only the agent's keepalive can tell
    # Samples come again only over a new connection: the agent gave up on the frozen one and reconnected.
    await wait_for_samples(server, settings, "box1", stored + 3)
    assert proxy.accepted >= 2
    scope.cancel()
