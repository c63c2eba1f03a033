"""/metrics for Prometheus: the exposition text, checked by promtool, and scraped by a real Prometheus."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import httpx
import pytest
import trio

from helpers import (ack_reaching, add_host, hello_frame, open_tls, receive_json, sample_frame, server_certificate,
                     upgrade)
from mbot import app, metrics, store
from mbot.metrics import Histogram, ServerStats

NOW = 1_700_000_000.0


def test_render_names_labels_and_escaping():
    host = store.Host(id=1, name='we"ird\\box', owner=0, key_id="k", created=NOW, facts={"interval": 5}, epoch=1,
                      last_seq=1, last_ts=NOW, last_seen=NOW - 1, samples_count=1, dropped=3, last_metrics={
                          "cpu": 50.0, "load": [1, 2, 3], "ram": {"used": 1, "total": 4},
                          "disks": {"/": {"used": 1, "total": 2}}, "net": {"eth0": {"rx": 5, "tx": 6}},
                          "temps": {"cpu": 40.5},
                          "gpus": [{"name": "H100", "util": 87, "vram_used": 1, "vram_total": 2, "power": 300}]})
    hist = Histogram()
    for v in (0.002, 0.02, 3.0):
        hist.observe(v)
    text = metrics.render([host], ServerStats(2, 42, hist, {"429": 1}, 5), NOW)
    lines = text.splitlines()
    assert 'mbot_host_up{host="we\\"ird\\\\box",key="k"} 1' in lines
    assert 'mbot_host_cpu_usage_ratio{host="we\\"ird\\\\box",key="k"} 0.5' in lines
    assert 'mbot_gpu_utilization_ratio{host="we\\"ird\\\\box",key="k",gpu="0",name="H100"} 0.87' in lines
    assert 'mbot_host_disk_used_bytes{host="we\\"ird\\\\box",key="k",disk="/"} 1' in lines
    assert "mbot_samples_ingested_total 42" in lines
    assert 'mbot_ingest_commit_seconds_bucket{le="0.0025"} 1' in lines
    assert 'mbot_ingest_commit_seconds_bucket{le="+Inf"} 3' in lines
    assert 'mbot_telegram_api_errors_total{kind="429"} 1' in lines
    assert lines.count("# TYPE mbot_host_load1 gauge") == 1
    assert text.endswith("\n")


def test_an_offline_host_exports_up_0_and_when_it_was_seen_not_stale_values():
    host = store.Host(id=1, name="gone", owner=0, key_id="k", created=NOW, facts={"interval": 5}, epoch=1,
                      last_seq=1, last_ts=NOW - 600, last_seen=NOW - 600, samples_count=1,
                      last_metrics={"cpu": 50.0, "ram": {"used": 1, "total": 4}})
    text = metrics.render([host], ServerStats(0, 0, Histogram()), NOW)
    assert 'mbot_host_up{host="gone",key="k"} 0' in text
    assert f'mbot_host_last_seen_timestamp_seconds{{host="gone",key="k"}} {int(NOW - 600)}' in text
    assert "mbot_host_cpu_usage_ratio" not in text and "mbot_host_memory_used_bytes" not in text


async def start_with_one_host(settings, nursery):
    """A server with /metrics on, and host box1 that has sent one sample (CPU 25 %)."""
    settings = dataclasses.replace(settings, metrics_port=0)
    running = await nursery.start(lambda task_status: app.serve(settings, server_certificate(settings),
                                                                handle_signals=False, task_status=task_status))
    key = add_host(settings, "box1")
    stream = await open_tls(running.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    await ws.send_message(sample_frame(1, cpu=25.0))
    await ack_reaching(ws, 1)
    return running, stream, key.key_id


async def test_endpoint_serves_live_data(settings, nursery):
    running, stream, key_id = await start_with_one_host(settings, nursery)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{running.metrics_port}/metrics")
        missing = await client.get(f"http://127.0.0.1:{running.metrics_port}/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert f'mbot_host_cpu_usage_ratio{{host="box1",key="{key_id}"}} 0.25' in response.text
    assert "mbot_connected_agents 1" in response.text
    assert missing.status_code == 404
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "metrics"], input=response.text, capture_output=True,
                                 text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    await trio.aclose_forcefully(stream)
    await running.aclose()


@pytest.mark.skipif(not shutil.which("prometheus"), reason="Debian's prometheus package is not installed")
async def test_real_prometheus_scrapes_a_host(settings, nursery, tmp_path):
    import socket

    running, stream, _ = await start_with_one_host(settings, nursery)

    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: mbot\n"
                      f"    static_configs: [{{targets: ['127.0.0.1:{running.metrics_port}']}}]\n")
    with socket.socket() as s:  # Prometheus takes an address, not port 0: ask the kernel for a free one
        s.bind(("127.0.0.1", 0))
        web = s.getsockname()[1]
    prometheus = await trio.lowlevel.open_process(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(60):
                # Cross-process state with no notification to wait on: ask Prometheus until the series appears.
                while True:
                    try:
                        answer = (await client.get(f"http://127.0.0.1:{web}/api/v1/query",
                                                   params={"query": 'mbot_host_cpu_usage_ratio{host="box1"}'})).json()
                        if answer["data"]["result"]:
                            break
                    except (httpx.TransportError, ValueError):
                        pass  # not listening yet, or still starting (it answers 503 with plain text)
                    await trio.sleep(0.2)
        assert float(answer["data"]["result"][0]["value"][1]) == 0.25
    finally:
        prometheus.terminate()
        await prometheus.wait()
        await trio.aclose_forcefully(stream)
        await running.aclose()
