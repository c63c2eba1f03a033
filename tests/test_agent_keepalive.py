"""The agent's keepalive: no ping while the server's frames show the connection lives (acks every few intervals), a
ping after ping_interval of silence, and a path that silently went dead dropped after ping_interval + ping_timeout."""
from __future__ import annotations

import trio

from helpers import add_host, load_agent, read_db
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
                               ping_interval=0.3, ping_timeout=0.3, backoff_min=0.05, backoff_max=0.1,
                               quick_reconnect=(0.05, 0.1), fast_retry=(0.05, 0.1))
    a = agent.Agent(config, agent.Collector(gpu=False))
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await a.run()

    nursery.start_soon(run)
    await proxy.wait_connections(1)
    with trio.fail_after(10):
        while read_db(settings, "SELECT count(*) FROM samples")[0][0] < 3:
            await trio.sleep(0.05)
    proxy.frozen = True  # no FIN, no RST: only the agent's keepalive can tell
    await trio.sleep(0.1)
    proxy.frozen = False  # new connections pass; the frozen one stays frozen until the agent gives up on it
    with trio.fail_after(10):
        while proxy.accepted < 2:
            await trio.sleep(0.05)
        stored = read_db(settings, "SELECT count(*) FROM samples")[0][0]
        while read_db(settings, "SELECT count(*) FROM samples")[0][0] <= stored:
            await trio.sleep(0.05)
    scope.cancel()
