"""The real agent (agent/mbot_agent.py) against the real server over real TLS, in one trio run."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import trio

from helpers import ROOT, add_host, load_agent, read_db, wait_for_samples
from mbot import app

agent = load_agent()


def agent_config(server: app.Server, secret: str, tmp_path, **overrides) -> "agent.AgentConfig":
    base = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.1,
                             fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                             backoff_min=0.05, backoff_max=0.2)
    return dataclasses.replace(base, **overrides)


async def run_in(nursery: trio.Nursery, config, collector=None) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run():
        with scope:
            await agent.run_agent(config, collector)

    nursery.start_soon(run)
    return scope


async def test_agent_streams_real_metrics(server, settings, nursery, tmp_path):
    key = add_host(settings, "box1")
    scope = await run_in(nursery, agent_config(server, key.secret, tmp_path))
    await wait_for_samples(server, settings, "box1", 3)
    scope.cancel()
    (facts, metrics, seq), = read_db(settings, "SELECT facts, last_metrics, last_seq FROM hosts")
    facts, metrics = json.loads(facts), json.loads(metrics)
    assert facts["agent"] == agent.__version__ and facts["cpu_count"] >= 1
    assert 0 <= metrics["cpu"] <= 100 and metrics["ram"]["used"] <= metrics["ram"]["total"]
    assert "/" in metrics["disks"] or metrics["disks"]
    # seqs are stored once each, in order, with no gap.
    seqs = [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY rowid")]
    assert seqs == list(range(1, len(seqs) + 1)) and seq == seqs[-1]


async def test_wrong_secret_exits_1(server, tmp_path, caplog):
    with trio.fail_after(10):
        assert await agent.run_agent(agent_config(server, "not-the-secret", tmp_path)) == 1
    assert "secret rejected" in caplog.text
    assert "not-the-secret" not in caplog.text


async def test_changed_certificate_stops_a_pinned_agent_before_it_sends(server, settings, tmp_path, caplog):
    key = add_host(settings, "box1")
    with trio.fail_after(10):
        assert await agent.run_agent(agent_config(server, key.secret, tmp_path, fingerprint="ab" * 32)) == 1
    assert "rejected agent connection" not in caplog.text  # the server never saw an upgrade request
    assert server.fingerprint in caplog.text  # the agent says which certificate it saw

    # Trust on first use: a different fingerprint on file means the same.
    (tmp_path / "fp.json").write_text(json.dumps({"fp": "cd" * 32}))
    with trio.fail_after(10):
        assert await agent.run_agent(agent_config(server, key.secret, tmp_path, fingerprint=None)) == 1
    assert read_db(settings, "SELECT samples_count FROM hosts") == [(0,)]


async def test_trust_on_first_use_saves_the_fingerprint(server, settings, nursery, tmp_path):
    key = add_host(settings, "box1")
    scope = await run_in(nursery, agent_config(server, key.secret, tmp_path, fingerprint=None))
    await wait_for_samples(server, settings, "box1", 1)
    scope.cancel()
    assert json.loads((tmp_path / "fp.json").read_text())["fp"] == server.fingerprint


async def test_gpu_metrics_through_fake_nvml(server, settings, nursery, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakes"))
    import pynvml

    pynvml.reset()
    monkeypatch.delitem(__import__("sys").modules, "pynvml", raising=False)
    key = add_host(settings, "gpubox")
    collector = agent.Collector(gpu=True)
    scope = await run_in(nursery, agent_config(server, key.secret, tmp_path), collector)
    await wait_for_samples(server, settings, "gpubox", 2)
    scope.cancel()
    (facts, metrics), = read_db(settings, "SELECT facts, last_metrics FROM hosts")
    assert json.loads(facts)["gpus"] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    gpus = json.loads(metrics)["gpus"]
    assert gpus[0]["util"] == 87 and gpus[0]["power"] == pytest.approx(312.5) and gpus[1]["temp"] == 35
    layout = json.loads(read_db(settings, "SELECT names FROM layouts ORDER BY id DESC LIMIT 1")[0][0])
    assert {"gpu0", "vram0", "gputemp0", "power0", "gpu1"} <= set(layout)


def test_check_prints_one_sample_and_sends_nothing(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "agent" / "mbot_agent.py"), "--check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["agent"] == agent.__version__ and 0 <= report["metrics"]["cpu"] <= 100
    assert report["host"]["cpu_count"] >= 1
    containers = report["containers"]  # the containers it sees, or why it sees none
    assert isinstance(containers, list) or containers.startswith("containers: ")
    assert not (tmp_path / ".env").exists()  # no settings needed, none written


def test_install_systemd_writes_the_documented_unit(tmp_path):
    import subprocess
    import sys

    (tmp_path / ".env").write_text("AGENT_SECRET=x\n")
    done = subprocess.run([sys.executable, str(ROOT / "agent" / "mbot_agent.py"), "--install-systemd",
                           "--systemd-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "mbot-agent.service").read_text()
    assert f"EnvironmentFile={tmp_path / '.env'}" in unit and f"WorkingDirectory={tmp_path}" in unit
    assert f"ExecStart={sys.executable} {ROOT / 'agent' / 'mbot_agent.py'}" in unit
    assert "Restart=always" in unit
    # deploy/mbot-agent.service is the same unit for /opt/mbot-agent: the two never drift apart.
    shipped = (ROOT / "deploy" / "mbot-agent.service").read_text()
    expected = agent.systemd_unit("/usr/bin/python3", "/opt/mbot-agent/mbot_agent.py", "/opt/mbot-agent",
                                  "/opt/mbot-agent/.env", "mbot-agent")
    assert shipped.endswith(expected)
