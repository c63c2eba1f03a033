"""AMD GPUs through amdsmi (a fake shaped from its documented API, like the fake pynvml), beside NVIDIA ones; GPUs
named by model in chart legends and on the card."""
from __future__ import annotations

import json
import logging
import sys

import pytest

from helpers import ROOT, add_host, load_agent, read_db, wait_for_samples
from mbot import plotspec, series
from mbot.model import Host
from mbot.telegram import views
from test_agent_e2e import agent_config, run_in

agent = load_agent()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Both fakes first on sys.path, fresh: two NVIDIA GPUs (H100, A10) and two AMD ones (MI300X, RX 7900 XTX)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakes"))
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakes" / "amd"))
    for name in ("pynvml", "amdsmi"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import amdsmi
    import pynvml

    pynvml.reset()
    amdsmi.reset()
    yield amdsmi
    # The fake must not outlive the test: every later Collector would find AMD GPUs.
    sys.modules.pop("amdsmi", None)


def test_amd_readings_in_the_units_of_a_sample(fake_gpus):
    collector = agent.Collector(gpu=True)
    try:
        gpus = collector.collect()["gpus"]
        inventory = collector.gpu_inventory()
    finally:
        collector.close()
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10", "AMD Instinct MI300X",
                                         "AMD Radeon RX 7900 XTX"]
    mi300, radeon = gpus[2], gpus[3]
    # MI300X: no edge sensor (hotspot instead), no current power (the average instead); VRAM from MB to bytes.
    assert mi300 == {"name": "AMD Instinct MI300X", "util": 93.0, "vram_total": 196592 << 20,
                     "vram_used": 40960 << 20, "temp": 71.0, "power": 612.0}
    assert radeon["temp"] == 45.0 and radeon["power"] == 38.0 and radeon["util"] == 4.0
    assert inventory[2] == {"name": "AMD Instinct MI300X", "vendor": "amd", "driver": "6.8.5", "vram": 196592 << 20}
    assert fake_gpus.shutdown_calls == 1


def test_unreadable_amd_fields_are_left_out_not_guessed(fake_gpus):
    fake_gpus.DEVICES[1].update(gfx="N/A", temps={}, power="N/A", average_power="N/A", vram_total_mb=0)
    collector = agent.Collector(gpu=True)
    try:
        radeon = collector.collect()["gpus"][3]
    finally:
        collector.close()
    assert radeon == {"name": "AMD Radeon RX 7900 XTX"}


def test_no_amd_driver_is_one_line_and_no_gpus(fake_gpus, caplog):
    fake_gpus.FAIL_INIT = True
    caplog.set_level(logging.INFO, logger="mbot.agent")
    collector = agent.Collector(gpu=True)
    try:
        assert collector.gpu_names == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    finally:
        collector.close()
    assert caplog.text.count("AMD GPU metrics off: amdsmi cannot start") == 1


@pytest.mark.parametrize("name, model", [
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA H100 80GB HBM3", "H100 80GB HBM3"),
    ("AMD Instinct MI300X", "Instinct MI300X"), ("AMD Radeon RX 7900 XTX", "RX 7900 XTX"), ("NVIDIA", "NVIDIA"),
    ("", "GPU"),
])
def test_gpu_model_names(name, model):
    assert series.gpu_model(name) == model


async def test_gpus_are_named_by_model_in_legends_and_on_the_card(server, settings, nursery, tmp_path, fake_gpus):
    key = add_host(settings, "gpubox")
    collector = agent.Collector(gpu=True)
    scope = await run_in(nursery, agent_config(server, key.secret, tmp_path), collector)
    await wait_for_samples(server, settings, "gpubox", 2)
    scope.cancel()
    collector.close()
    (facts, metrics), = read_db(settings, "SELECT facts, last_metrics FROM hosts")
    facts, metrics = json.loads(facts), json.loads(metrics)
    assert facts["gpus"][2:] == ["AMD Instinct MI300X", "AMD Radeon RX 7900 XTX"]
    layout = json.loads(read_db(settings, "SELECT names FROM layouts ORDER BY id DESC LIMIT 1")[0][0])
    assert {"gpu2", "vram2", "gputemp2", "power2", "gputemp3"} <= set(layout)

    legends = [c.label for c in plotspec.resolve_metrics(["gpu", "gputemp"], layout, None, facts["gpus"])]
    assert legends == ["H100 80GB HBM3 #0", "A10 #1", "Instinct MI300X #2", "RX 7900 XTX #3",
                       "H100 80GB HBM3 #0 temp", "A10 #1 temp", "Instinct MI300X #2 temp", "RX 7900 XTX #3 temp"]
    # A host whose hello named no GPUs (an older agent) keeps the plain labels.
    assert plotspec.resolve_metrics(["gpu2"], layout)[0].label == "GPU 2"

    host = Host(id=1, name="gpubox", owner=0, key_id="k" * 16, created=0.0, facts=facts, epoch=1, last_seq=2,
                last_ts=None, last_seen=None, last_metrics=metrics, samples_count=2)
    card = views.host_card(host, now=0.0)
    assert "Instinct MI300X #2 · 93 % · VRAM 40.0 GiB / 192.0 GiB (21 %) · 71 °C · 612 W" in card
    assert "RX 7900 XTX #3" in card and "H100 80GB HBM3 #0" in card
