"""The metric catalogue (mbot/series.py): every consumer reads it, so a new metric is one row plus a sample."""
from __future__ import annotations

import dataclasses
import json
import re
import time

import httpx
import pytest
import trio

from fakebot import FakeBot
from helpers import ack_reaching, hello_frame, open_tls, receive_json, upgrade
from mbot import alerts, plotspec, protocol, series
from mbot.metrics import Histogram, ServerStats, render
from mbot.store import Host
from mbot.telegram import alert_commands, views
from test_bot import ALICE, say, start_server

# What an agent with everything sends (two disks, two interfaces, two sensors, two GPUs).
FULL = {
    "cpu": 12.5, "cpu_cores": [10.0, 15.0], "load": [0.5, 0.4, 0.3], "ram": {"used": 4e9, "total": 16e9},
    "swap": {"used": 0, "total": 2e9}, "disks": {"/": {"used": 5e10, "total": 1e11}, "/home": {"used": 1, "total": 2}},
    "disk_io": {"read": 10240.0, "write": 5.0}, "net": {"eth0": {"rx": 1200.0, "tx": 800.5}, "wg0": {"rx": 1, "tx": 2}},
    "temps": {"cpu": 54.0, "nvme": 40.9}, "uptime": 19410.0, "procs": 231,
    "gpus": [{"name": "H100", "util": 87.0, "vram_used": 1e9, "vram_total": 8e10, "temp": 61.0, "power": 312.5},
             {"name": "H100", "util": 5.0, "vram_used": 0, "vram_total": 8e10, "temp": 40.0, "power": 70.0}],
    "checks": {"web": {"up": 100.0, "ms": 35.5, "cert": 41.2}, "db:5432": {"up": 0.0}},
    "containers": {"web": {"cpu": 1.5, "mem": 5e7, "down": 0}, "db": {"down": 1}},
}


# What the server adds to a live sample itself (mbot/linkquality.py, mbot/speedtest.py): never from an agent.
MEASURED = {"link": {"rtt": 12.5, "jitter": 0.75, "loss": 0.0}, "speed": {"down": 1.2e8, "up": 3.4e7}}


def test_every_row_reaches_every_consumer_it_declares():
    metrics = {**protocol.validate_metrics(FULL), **MEASURED}
    flat = protocol.flatten(metrics)
    exported = render([Host(1, "box1", 0, "k", 0.0, {}, 1, 1, None, 0.0, metrics, 1)], ServerStats(0, 0, Histogram()),
                      1.0)
    for row in series.CATALOGUE:
        present = [name for name in flat if row.pattern.fullmatch(name)]
        assert present, f"{row.name}: the full sample has no such series"
        if row.plot:
            for word in row.plot:
                choices = plotspec.resolve_metrics([word], flat)
                assert {c.series for c in choices} & set(present), f"/plot {word} does not draw {row.name}"
        else:
            assert row.size_of or row.plot_one or row.name.endswith("_total") or "_total" in row.name, \
                f"{row.name} cannot be plotted at all"
        if row.alert:
            state = row.unit == series.STATE  # a state rule takes the word down, not a threshold
            spec = alert_commands.parse_setalert(["box1", row.alert, "down" if state else "1"])
            rule = spec.rule(1)
            engine = alerts.AlertEngine([rule], now=0.0)
            engine.observe(1, 1.0, flat, 1.0)
            assert {s.series for s in engine.states(1)} & set(present), f"/setalert {row.alert} misses {row.name}"
        if row.prom:
            assert f"\n{row.prom.name}{{" in exported, f"{row.name} is not exported as {row.prom.name}"
        assert series.label(present[0]) != present[0] or row.label == row.name


def test_plot_aliases_and_one_member_forms():
    flat = protocol.flatten(protocol.validate_metrics(FULL))
    assert [c.series for c in plotspec.resolve_metrics(["temps"], flat)] == ["temp:cpu", "temp:nvme"]
    assert [c.series for c in plotspec.resolve_metrics(["temp:nvme"], flat)] == ["temp:nvme"]
    assert [c.series for c in plotspec.resolve_metrics(["net:wg0"], flat)] == ["net_rx:wg0", "net_tx:wg0"]
    assert [c.series for c in plotspec.resolve_metrics(["gpu1"], flat)] == ["gpu1"]
    assert [c.series for c in plotspec.resolve_metrics(["disk"], flat, "gib")] == ["disk_used:/", "disk_used:/home"]


def generic_flatten(metrics: dict) -> dict[str, float]:
    """flatten as the catalogue defines it: every row's generator, every value named by the row."""
    return {row.series(labels): float(value) for row in series.CATALOGUE for labels, value in row.extract(metrics)}


@pytest.mark.parametrize("metrics", [
    {**FULL, **MEASURED},
    {"disks": {"/\ufffd": {"used": 0, "total": 0}}, "net": {"eth0": {"rx": 5.0}, "lo": {}}, "cpu_cores": [],
     "temps": {"a b": -3}, "checks": {"x": {}}, "containers": {"c": {"mem": 1}}, "load": [1, 2, 3]},
    {},
])
def test_flatten_writes_exactly_what_the_rows_yield(metrics):
    # flatten's direct path (each extractor's fill, rows skipped when their key is absent) against the rows'
    # generators: the same names, values and order.
    metrics = protocol.validate_metrics(metrics) | {k: v for k, v in metrics.items() if k in MEASURED}
    assert list(protocol.flatten(metrics).items()) == list(generic_flatten(metrics).items())
    odd = dataclasses.replace(series.CATALOGUE[0], name="cpu:{label}")  # a row whose name the fill cannot take
    assert odd.fill is None and series.CATALOGUE[0].fill is not None


ENTROPY = series.Metric("entropy", series.scalar("entropy"), series.COUNT, "entropy", plot=("entropy",),
                        alert="entropy", card=True, button="Entropy",
                        prom=series.Prom("mbot_host_entropy_bits", "Entropy the kernel has available."))


async def test_a_made_up_metric_needs_only_a_row_and_a_sample(monkeypatch, fake: FakeBot, nursery, settings):
    monkeypatch.setattr(series, "CATALOGUE", [*series.CATALOGUE, ENTROPY])
    server = await start_server(nursery, settings, fake, metrics_port=0)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    assert "Alert set on <b>box1</b>: entropy" in (await say(fake, ALICE, "/setalert box1 entropy <100"))["text"]
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    for seq in (1, 2):
        await ws.send_message(json.dumps({"type": "sample", "seq": seq, "ts": time.time() - 3 + seq,
                                          "metrics": {"cpu": 5.0, "entropy": 42}}))
    await ack_reaching(ws, 2)

    # An alert arrives as its chart with the text as caption, or as text when there is no chart.
    fired = await fake.wait_for(lambda c: c.method in ("sendMessage", "sendPhoto") and "box1: entropy 42" in c.shown,
                                timeout=10)
    assert "below 100" in fired.shown
    card = await say(fake, ALICE, "/status box1")
    assert "Entropy 42" in card["text"]
    assert "📈 Entropy" in {b["text"] for row in card["reply_markup"]["inline_keyboard"] for b in row}
    chart = await say(fake, ALICE, "/plot box1 entropy 1h", method="sendPhoto")
    assert "entropy" in chart["caption"]
    async with httpx.AsyncClient() as client:
        scraped = (await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
    assert re.search(r'mbot_host_entropy_bits\{host="box1",key="[0-9a-f]+"\} 42', scraped)
    await trio.aclose_forcefully(stream)
    await server.aclose()


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot
