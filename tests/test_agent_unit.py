"""Unit tests of agent/mbot_agent.py: configuration, pinning files, metrics, the unacked buffer, one connection's
frames against a fake WebSocket. No network, no sleeps (the loop tests use trio's autojump clock)."""
from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio_websocket

from mbot import protocol

ROOT = Path(__file__).resolve().parent.parent
AGENT_PATH = ROOT / "agent" / "mbot_agent.py"
FAKES = Path(__file__).resolve().parent / "fakes"


def _load_agent():
    """The agent is one file, not a package: load it by path (registered in sys.modules, as dataclasses need)."""
    name = "mbot_agent"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


agent = _load_agent()

FP = "ab" * 32
FP2 = "cd" * 32
BASE_ENV = {"AGENT_SECRET": "s3cret", "AGENT_SERVER_IP": "10.0.0.5"}


# --- the file itself -------------------------------------------------------------------------------------------


def test_agent_source_is_python39_syntax():
    # Monitored hosts often run an older Python than the server (Ubuntu 22.04: 3.10, Debian 11: 3.9).
    ast.parse(AGENT_PATH.read_text(), feature_version=(3, 9))


def test_agent_does_not_import_pynvml_at_module_level():
    tree = ast.parse(AGENT_PATH.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {alias.name for n in top for alias in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert "pynvml" not in names and "asyncio" not in names


# --- configuration ---------------------------------------------------------------------------------------------


def test_config_defaults():
    cfg = agent.config_from_env(BASE_ENV, {})
    assert cfg == agent.AgentConfig(secret="s3cret", server="10.0.0.5")
    assert (cfg.port, cfg.interval, cfg.verify_ssl, cfg.fingerprint, cfg.allow_power) == (8000, 5.0, True, None,
                                                                                           False)
    assert cfg.fingerprint_file == "~/.bot_fingerprint.json"
    assert cfg.capabilities == ["speedtest", "checks"]


def test_config_environment_beats_env_file():
    env_file = {"AGENT_SECRET": "from-file", "AGENT_SERVER_IP": "file.example", "AGENT_PORT": "9000",
                "AGENT_INTERVAL": "2.5", "AGENT_ALLOW_POWER": "1"}
    cfg = agent.config_from_env({"AGENT_SERVER_IP": "env.example", "AGENT_PORT": "9443", "AGENT_INTERVAL": ""},
                                env_file)
    assert cfg.server == "env.example" and cfg.port == 9443
    assert cfg.secret == "from-file" and cfg.interval == 2.5  # an empty variable counts as unset
    assert cfg.allow_power and cfg.capabilities == ["power", "speedtest", "checks"]


@pytest.mark.parametrize("name,value", [
    ("AGENT_PORT", "abc"), ("AGENT_PORT", "0"), ("AGENT_PORT", "70000"),
    ("AGENT_INTERVAL", "abc"), ("AGENT_INTERVAL", "0"), ("AGENT_INTERVAL", "-1"), ("AGENT_INTERVAL", "nan"),
    ("AGENT_VERIFY_SSL", "maybe"), ("AGENT_ALLOW_POWER", "2"), ("AGENT_FINGERPRINT", "abcd"),
    ("AGENT_SERVER_IP", "https://example.com"), ("AGENT_SECRET", "has space"),
    ("AGENT_SPOOL_MAX", "0"), ("AGENT_SPOOL_MAX", "-5"), ("AGENT_SPOOL_MAX", "1.5"), ("AGENT_SPOOL_MAX", "lots"),
    ("AGENT_SPOOL_MAX", "99999999999"),
])
def test_config_bad_value_names_the_variable(name, value):
    with pytest.raises(agent.ConfigError) as info:
        agent.config_from_env({**BASE_ENV, name: value}, {})
    assert info.value.variable == name
    assert str(info.value).startswith(name)


@pytest.mark.parametrize("missing", ["AGENT_SECRET", "AGENT_SERVER_IP"])
def test_config_required(missing):
    env = dict(BASE_ENV)
    del env[missing]
    with pytest.raises(agent.ConfigError) as info:
        agent.config_from_env(env, {})
    assert info.value.variable == missing


def test_config_spool(tmp_path):
    cfg = agent.config_from_env(BASE_ENV, {})
    assert (cfg.spool_max, cfg.spool_file, cfg.spool_capacity) == (None, None, 17280)  # 24 h at 5 s
    cfg = agent.config_from_env({**BASE_ENV, "AGENT_SPOOL_MAX": " 50 ", "AGENT_SPOOL_FILE": "/var/x/spool.db"}, {})
    assert (cfg.spool_max, cfg.spool_file, cfg.spool_capacity) == (50, "/var/x/spool.db", 50)
    path = tmp_path / ".env"
    agent.write_env_file(path, {**BASE_ENV, "AGENT_SPOOL_MAX": "50", "AGENT_SPOOL_FILE": "/var/x/spool.db"})
    assert agent.config_from_env({}, agent.read_env_file(path)) == cfg


def test_main_bad_spool_max_exits_2(tmp_path, monkeypatch, capsys):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AGENT_SPOOL_MAX", "0")
    assert agent.main(["--env-file", str(tmp_path / ".env")]) == 2
    assert "AGENT_SPOOL_MAX" in capsys.readouterr().err


def test_config_fingerprint_normalised():
    colons = ":".join(FP[i:i + 2] for i in range(0, 64, 2)).upper()
    cfg = agent.config_from_env({**BASE_ENV, "AGENT_FINGERPRINT": colons, "AGENT_VERIFY_SSL": "false",
                                 "AGENT_FINGERPRINT_FILE": "/x/fp.json"}, {})
    assert cfg.fingerprint == FP
    assert cfg.verify_ssl is False
    assert cfg.fingerprint_path == Path("/x/fp.json")
    assert agent.normalize_fingerprint(f" {FP.upper()} ") == FP


def test_config_ipv6_brackets():
    assert agent.config_from_env({**BASE_ENV, "AGENT_SERVER_IP": "[::1]"}, {}).server == "::1"
    assert agent.server_id("::1", 8000) == "[::1]:8000"


def test_env_file_round_trip_and_mode(tmp_path):
    path = tmp_path / ".env"
    typed = {**BASE_ENV, "AGENT_FINGERPRINT": FP}
    assert agent.save_env_file(path, typed) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = agent.read_env_file(path)
    assert values == typed
    assert agent.config_from_env({}, values) == agent.config_from_env(typed, {})
    assert agent.save_env_file(path, typed) is False  # unchanged: not rewritten
    assert agent.save_env_file(path, {"AGENT_SECRET": ""}) is False  # an empty answer is no answer


def test_env_file_parsing_and_other_lines_kept(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# comment\n\nexport AGENT_PORT=9000\nAGENT_SERVER_IP=\nOTHER=\"x y\"\nnonsense\n")
    assert agent.read_env_file(path) == {"AGENT_PORT": "9000", "AGENT_SERVER_IP": "", "OTHER": "x y"}
    assert agent.save_env_file(path, {"AGENT_SERVER_IP": "my host", "AGENT_SECRET": "s3cret"}) is True
    assert agent.read_env_file(path) == {"AGENT_PORT": "9000", "AGENT_SERVER_IP": "my host", "OTHER": "x y",
                                         "AGENT_SECRET": "s3cret"}
    # The user's own lines (comments included) stay as they were; the empty AGENT_SERVER_IP= line was replaced.
    lines = path.read_text().splitlines()
    assert lines[:3] == ["# comment", "", "export AGENT_PORT=9000"] and "nonsense" in lines
    assert lines.count('AGENT_SERVER_IP="my host"') == 1 and "AGENT_SERVER_IP=" not in lines
    assert agent.read_env_file(tmp_path / "missing") == {}


def test_main_bad_value_exits_2(tmp_path, monkeypatch, capsys):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AGENT_PORT", "abc")
    assert agent.main(["--env-file", str(tmp_path / ".env")]) == 2
    err = capsys.readouterr().err
    assert "AGENT_PORT" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / ".env").exists()


# --- fingerprint file and pinning ------------------------------------------------------------------------------


def test_fingerprint_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "fp.json"
    assert agent.read_fingerprint_file(path) is None
    agent.write_fingerprint_file(path, FP, "10.0.0.5:8000")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"fp": FP, "server": "10.0.0.5:8000"}
    assert agent.read_fingerprint_file(path) == (FP, "10.0.0.5:8000")
    path.write_text(json.dumps({"fp": FP.upper()}))  # the seed's format: no server
    assert agent.read_fingerprint_file(path) == (FP, None)
    path.write_text("not json")
    with pytest.raises(agent.FingerprintFileError):
        agent.read_fingerprint_file(path)


class StubCollector:
    def __init__(self):
        self.calls = 0

    def collect(self):
        self.calls += 1
        return {"cpu": 1.0, "uptime": 10.0}

    def host_facts(self):
        return {"hostname": "box1", "os": "Linux 6", "platform": "linux", "arch": "x86_64", "cpu_count": 2,
                "mem_total": 1000, "boot_time": 1.0, "disks": ["/"], "gpus": []}

    def close(self):
        pass


async def _inline(fn, *args):
    return fn(*args)


def _agent(tmp_path, **env):
    cfg = agent.config_from_env({**BASE_ENV, "AGENT_FINGERPRINT_FILE": str(tmp_path / "fp.json"), **env}, {})
    a = agent.Agent(cfg, StubCollector())
    a._to_thread = _inline  # deterministic under the autojump clock: no real threads
    return a


def test_pin_trust_on_first_use_then_enforced(tmp_path):
    der = b"certificate one"
    seen = agent.cert_fingerprint(der)
    a = _agent(tmp_path)
    assert a._check_pin(der) == seen  # no file: trust, and save (after the upgrade)
    a._save_fingerprint(seen)
    assert agent.read_fingerprint_file(tmp_path / "fp.json") == (seen, "10.0.0.5:8000")
    assert a._check_pin(der) is None
    with pytest.raises(agent.AgentStop) as info:
        a._check_pin(b"certificate two")
    message = str(info.value)
    assert "certificate changed" in message and seen in message
    assert agent.cert_fingerprint(b"certificate two") in message
    assert "AGENT_FINGERPRINT" in message and str(tmp_path / "fp.json") in message


def test_pin_file_applies_whatever_the_server(tmp_path):
    agent.write_fingerprint_file(tmp_path / "fp.json", FP, "old.example:8000")
    with pytest.raises(agent.AgentStop) as info:
        _agent(tmp_path)._check_pin(b"cert")
    assert "old.example:8000" in str(info.value)


def test_pin_from_environment(tmp_path):
    der = b"cert"
    a = _agent(tmp_path, AGENT_FINGERPRINT=agent.cert_fingerprint(der).upper())
    assert a._check_pin(der) is None
    with pytest.raises(agent.AgentStop):
        a._check_pin(b"other")
    assert not (tmp_path / "fp.json").exists()


def test_pin_off(tmp_path):
    agent.write_fingerprint_file(tmp_path / "fp.json", FP)
    assert _agent(tmp_path, AGENT_VERIFY_SSL="0")._check_pin(b"anything") is None


# --- metrics ---------------------------------------------------------------------------------------------------


def test_collect_on_this_machine():
    collector = agent.Collector(gpu=False)
    try:
        first = collector.collect()
        second = collector.collect()
    finally:
        collector.close()
    for m in (first, second):
        assert 0 <= m["cpu"] <= 100
        assert m["cpu_cores"] and all(0 <= v <= 100 for v in m["cpu_cores"])
        assert 0 <= m["ram"]["used"] <= m["ram"]["total"]
        assert 0 <= m["swap"]["used"] <= m["swap"]["total"]
        if sys.platform != "win32":
            assert "/" in m["disks"]
        assert all(0 <= d["used"] <= d["total"] for d in m["disks"].values())
        assert m["uptime"] > 0 and m["procs"] > 0
        if hasattr(os, "getloadavg"):
            assert len(m["load"]) == 3
        assert "gpus" not in m
        protocol.validate_metrics(m)  # what the server accepts
    assert "net" not in first and "disk_io" not in first  # rates need two readings
    assert set(second["disk_io"]) == {"read", "write"}
    assert second["net"] and "lo" not in second["net"]
    assert all(v >= 0 for rates in second["net"].values() for v in rates.values())


def test_host_facts():
    collector = agent.Collector(gpu=False)
    facts = collector.host_facts()
    assert facts["cpu_count"] >= 1 and facts["mem_total"] > 0 and facts["gpus"] == []
    assert facts["platform"] == sys.platform and facts["hostname"]


def test_compact_temps():
    t = SimpleNamespace
    raw = {
        "coretemp": [t(label="Package id 0", current=55.0), t(label="Core 0", current=50.0),
                     t(label="Package id 1", current=58.0)],
        "nvme": [t(label="Composite", current=40.85), t(label="Sensor 1", current=39.0)],
        "acpitz": [t(label="", current=27.8), t(label="", current=float("nan")), t(label="", current=-273.0)],
        "broken": [t(label="x", current=65261.8)],
    }
    assert agent.compact_temps(raw) == {"cpu": 58.0, "nvme": 40.9, "acpitz": 27.8, "nvme_sensor_1": 39.0}
    many = {f"g{i}": [t(label="a", current=30.0), t(label="b", current=31.0)] for i in range(20)}
    out = agent.compact_temps(many)
    assert len(out) == 16 and all(f"g{i}" in out for i in range(16))  # first sensors before the rest


def test_filesystem_filter():
    assert agent._is_real_filesystem("/dev/sda1", "/", "ext4")
    assert agent._is_real_filesystem("overlay", "/", "overlay")  # a container's root
    assert agent._is_real_filesystem("/dev/sdb1", "/home", "xfs")
    for device, mount, fstype in [("tmpfs", "/run", "tmpfs"), ("/dev/loop3", "/snap/core/1", "squashfs"),
                                  ("/dev/loop0", "/mnt/img", "ext4"), ("overlay", "/var/lib/docker/x", "overlay"),
                                  ("/dev/sda1", "/snap/foo", "ext4"), ("/dev/disk3s6", "/System/Volumes/VM", "apfs")]:
        assert not agent._is_real_filesystem(device, mount, fstype)


MOUNT_PROBE = """
import importlib.util, json, os, subprocess, sys, tempfile
spec = importlib.util.spec_from_file_location("mbot_agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec); sys.modules["mbot_agent"] = agent; spec.loader.exec_module(agent)
watch = agent.MountWatch("/proc/self/mounts", ttl=60.0, clock=lambda: 0.0)
seen = [watch.changed(), watch.changed()]
where = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "mbot-test", where], check=True)
seen += [watch.changed(), watch.changed()]
subprocess.run(["umount", where], check=True)
seen += [watch.changed(), watch.changed()]
print(json.dumps(seen))
"""


def test_a_mount_is_seen_at_the_next_sample_and_a_still_table_is_never_listed_again():
    """A real mount and unmount, in a mount namespace of the test's own (unshare -m: the host's table is left
    alone); needs root, as CI runs."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount in a namespace of its own")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNT_PROBE,
                           str(AGENT_PATH)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    # The first look lists; then only a mount or an unmount does (the fake clock never reaches max_age).
    assert json.loads(done.stdout) == [True, False, True, False, True, False]


def test_without_a_pollable_mount_table_partitions_are_listed_every_ttl():
    now = [0.0]
    watch = agent.MountWatch(None, ttl=60.0, clock=lambda: now[0])
    assert watch.changed() and not watch.changed()
    now[0] = 59.0
    assert not watch.changed()
    now[0] = 60.0
    assert watch.changed()
    # A pollable table is looked at again after max_age anyway.
    polled = agent.MountWatch("/proc/self/mounts", ttl=60.0, max_age=600.0, clock=lambda: now[0])
    try:
        assert polled.changed() and not polled.changed()
        now[0] += 600.0
        assert polled.changed()
    finally:
        polled.close()


@pytest.fixture
def fake_nvml(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    import pynvml

    assert Path(pynvml.__file__).parent == FAKES
    pynvml.reset()
    yield pynvml
    sys.modules.pop("pynvml", None)


def test_gpus_with_fake_nvml(fake_nvml, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    fake_nvml.FAILING = {(1, "nvmlDeviceGetTemperature")}
    collector = agent.Collector()
    assert collector.gpu_names == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    assert collector.host_facts()["gpus"] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    m = collector.collect()
    assert m["gpus"] == [
        {"name": "NVIDIA H100 80GB HBM3", "util": 87.0, "vram_used": 1 << 30, "vram_total": 80 << 30, "temp": 61.0,
         "power": 312.5},
        {"name": "NVIDIA A10", "util": 3.0, "vram_used": 0, "vram_total": 24 << 30, "power": 21.0},  # no temp
    ]
    protocol.validate_metrics(m)
    assert len([r for r in caplog.records if r.levelno >= logging.INFO and "GPU" in r.getMessage()]) == 1
    collector.close()
    collector.close()
    assert fake_nvml.shutdown_calls == 1
    assert "gpus" not in collector.collect()


def test_no_gpu_one_info_line(fake_nvml, caplog):
    caplog.set_level(logging.DEBUG, logger="mbot.agent")
    fake_nvml.FAIL_INIT = True
    collector = agent.Collector()
    for _ in range(3):
        assert "gpus" not in collector.collect()
    collector.close()
    assert collector.host_facts()["gpus"] == []
    gpu_lines = [r for r in caplog.records if "GPU" in r.getMessage() or "NVML" in r.getMessage()]
    assert len(gpu_lines) == 1 and gpu_lines[0].levelno == logging.INFO
    assert fake_nvml.init_calls == 1 and fake_nvml.shutdown_calls == 0


def test_gpu_listing_fails(fake_nvml, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    fake_nvml.FAILING = {(1, "nvmlDeviceGetName")}
    collector = agent.Collector()
    assert collector.gpu_names == [] and "gpus" not in collector.collect()
    assert fake_nvml.shutdown_calls == 1
    assert len([r for r in caplog.records if "GPU" in r.getMessage()]) == 1


def test_gpu_driver_without_gpus(fake_nvml, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    fake_nvml.DEVICES = []
    collector = agent.Collector()
    assert "gpus" not in collector.collect()
    assert fake_nvml.shutdown_calls == 1
    assert len([r for r in caplog.records if "GPU" in r.getMessage()]) == 1


# --- unacked samples -------------------------------------------------------------------------------------------


def _fill(buffer, first, last):
    for seq in range(first, last + 1):
        buffer.append(seq, agent.encode_sample(seq, 1_700_000_000.0 + seq, {"cpu": 1.0}))


def test_buffer_ack_removes_up_to_seq():
    buffer = agent.SampleBuffer(100)
    _fill(buffer, 1, 10)
    assert buffer.ack(0) == 0 and len(buffer) == 10
    assert buffer.ack(4) == 4
    assert (buffer.first_seq, buffer.last_seq) == (5, 10)
    assert buffer.ack(4) == 0  # again: nothing
    assert [seq for seq, _ in buffer.pending_after(7)] == [8, 9, 10]
    assert [seq for seq, _ in buffer.pending_after(0)] == list(range(5, 11))
    assert buffer.pending_after(10) == []
    assert buffer.ack(99) == 6 and len(buffer) == 0 and buffer.pending_after(0) == []


def test_buffer_overflow_drops_oldest_and_counts():
    buffer = agent.SampleBuffer(5)
    _fill(buffer, 1, 5)
    assert buffer.dropped == 0
    assert buffer.append(6, "{}") is True
    _fill(buffer, 7, 8)
    assert buffer.dropped == 3 and len(buffer) == 5
    assert [seq for seq, _ in buffer.pending_after(0)] == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError):
        buffer.append(10, "{}")


def test_buffer_dropped_count_rides_on_the_next_sample_sent_until_acked():
    buffer = agent.SampleBuffer(3)
    _fill(buffer, 1, 5)  # 1 and 2 dropped
    assert (buffer.dropped, buffer.unreported, buffer.reports) == (2, 2, {})
    assert buffer.attach_unreported(4) == 4  # the sender is about to send 4..5
    assert buffer.unreported == 0 and buffer.reports == {4: 2}
    sent = {seq: json.loads(text)["metrics"] for seq, text in buffer.pending_after(3)}
    assert sent == {4: {"cpu": 1.0, "dropped": 2}, 5: {"cpu": 1.0}}
    assert buffer.attach_unreported(4) is None  # nothing more to tell
    # The connection drops before the ack: a resend carries the same count, not a new one.
    assert json.loads(buffer.pending_after(0)[1][1])["metrics"]["dropped"] == 2
    # The carrying sample is itself dropped: its count comes back, plus one for it.
    _fill(buffer, 6, 7)  # drops 3 and 4
    assert (buffer.dropped, buffer.unreported, buffer.reports) == (4, 4, {})
    assert buffer.attach_unreported(0) == 5
    buffer.ack(5)  # committed, with its count: done
    assert (buffer.unreported, buffer.reports) == (0, {})
    assert all("dropped" not in json.loads(text)["metrics"] for _, text in buffer.pending_after(0))
    # Samples the server keeps refusing are discarded and counted the same way.
    assert buffer.discard(6) == 1 and (buffer.dropped, buffer.unreported) == (5, 1)


def test_with_dropped_on_empty_metrics():
    text = agent.encode_sample(3, 1_700_000_000.0, {})
    assert json.loads(agent.with_dropped(text, 4)) == {"seq": 3, "ts": 1_700_000_000.0, "metrics": {"dropped": 4}}
    protocol.parse_agent_frame(agent.sample_frame(agent.with_dropped(text, 4)))


def test_buffer_capacity_is_a_day():
    assert agent.buffer_capacity(5) == 17280
    assert agent.buffer_capacity(86400) == 1
    assert agent.buffer_capacity(0.001) == agent.BUFFER_MAX_SAMPLES


def test_batches_count_and_size():
    items = [(i, "x" * 10) for i in range(1, 1201)]
    out = list(agent.batches(items))
    assert [len(b) for b in out] == [500, 500, 200]
    assert [s for b in out for s, _ in b] == list(range(1, 1201))
    big = [(i, "y" * 400_000) for i in range(1, 6)]
    assert [len(b) for b in agent.batches(big)] == [2, 2, 1]
    assert list(agent.batches([])) == []


def test_frames_are_what_the_server_parses():
    metrics = {"cpu": 12.5, "temps": {"cpu": float("nan"), "nvme": 40.0}, "load": [0.5, float("inf"), 0.3]}
    text = agent.encode_sample(7, 1_764_019_410.25, metrics)
    assert json.loads(text) == {"seq": 7, "ts": 1764019410.25,
                                "metrics": {"cpu": 12.5, "temps": {"nvme": 40.0}, "load": [0.5, 0.3]}}
    single = protocol.parse_agent_frame(agent.sample_frame(agent.encode_sample(1, 1_764_019_410.25, {"cpu": 1})))
    assert [s.seq for s in single.items] == [1]
    buffer = agent.SampleBuffer(10)
    _fill(buffer, 1, 3)
    batch = protocol.parse_agent_frame(agent.samples_frame(text for _, text in buffer.pending_after(0)))
    assert [s.seq for s in batch.items] == [1, 2, 3]


def test_backoff_full_jitter():
    assert agent.backoff_delay(0, lambda: 0.7) == 1.0
    assert agent.backoff_delay(1, lambda: 1.0) == 2.0
    assert agent.backoff_delay(3, lambda: 0.0) == 1.0
    assert agent.backoff_delay(10, lambda: 1.0) == 60.0
    assert agent.backoff_delay(1000, lambda: 0.5) == pytest.approx(30.5)


def test_add_sample_overflow_logs_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mbot.agent")
    a = _agent(tmp_path)
    a.buffer = agent.SampleBuffer(3)
    for i in range(10):
        a.add_sample(1_700_000_000.0 + i, {"cpu": float(i)})
    assert a.seq == 10 and a.buffer.dropped == 7 and a.buffer.first_seq == 8
    assert len([r for r in caplog.records if "spool full" in r.getMessage()]) == 1
    assert a.buffer.unreported == 7  # the next sample sent says so


# --- one connection against a fake WebSocket -------------------------------------------------------------------


class FakeWebSocket:
    """The part of trio_websocket.WebSocketConnection the agent uses; the test plays the server."""

    def __init__(self):
        self.sent = []
        self.closed = None
        self._inbox_send, self._inbox = trio.open_memory_channel(100)
        self._changed = trio.Event()

    async def send_message(self, message):
        if self.closed is not None:
            raise trio_websocket.ConnectionClosed(self.closed)
        self.sent.append(json.loads(message))
        self._changed.set()
        self._changed = trio.Event()

    async def get_message(self):
        try:
            return await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio_websocket.ConnectionClosed(self.closed) from None

    async def ping(self, payload=None):
        await trio.sleep_forever()

    async def aclose(self, code=1000, reason=None):
        if self.closed is None:
            self.closed = trio_websocket.CloseReason(code, reason)

    # the server's side
    def push(self, frame):
        self._inbox_send.send_nowait(frame if isinstance(frame, str) else json.dumps(frame))

    def close_by_server(self, code, reason=None):
        self.closed = trio_websocket.CloseReason(code, reason)
        self._inbox_send.close()

    async def wait_sent(self, n):
        with trio.fail_after(5):
            while len(self.sent) < n:
                await self._changed.wait()
        return self.sent[n - 1]


async def test_connection_hello_replay_live_and_revoke(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="mbot.agent")
    a = _agent(tmp_path, AGENT_ALLOW_POWER="1", AGENT_INTERVAL="2")
    for i in range(1, 605):  # collected while the server was away
        a.add_sample(1_700_000_000.0 + i, {"cpu": 1.0})
    ws = FakeWebSocket()
    async with trio.open_nursery() as nursery:
        conn = agent._Connection(ws, nursery.cancel_scope)
        nursery.start_soon(a._serve, conn)

        hello = await ws.wait_sent(1)
        assert hello["type"] == "hello" and hello["epoch"] == a.epoch
        assert hello["capabilities"] == ["power", "speedtest", "checks"]
        assert hello["interval"] == 2.0 and hello["hostname"] == "box1" and hello["v"] == 1
        parsed = protocol.parse_agent_frame(json.dumps(hello))
        assert parsed.epoch == a.epoch and parsed.capabilities == {"power", "speedtest", "checks"}
        assert len(ws.sent) == 1  # nothing before the hello's ack

        ws.push({"type": "ack", "seq": 3})  # the server already has 1..3
        first = await ws.wait_sent(2)
        second = await ws.wait_sent(3)
        assert first["type"] == second["type"] == "samples"
        assert [s["seq"] for s in first["samples"]] == list(range(4, 504))
        assert [s["seq"] for s in second["samples"]] == list(range(504, 605))
        assert a.buffer.first_seq == 4

        a.add_sample(1_700_001_000.0, {"cpu": 2.0})
        live = await ws.wait_sent(4)
        assert live["type"] == "sample" and live["seq"] == 605 and live["metrics"] == {"cpu": 2.0}

        ws.push({"type": "surprise", "x": 1})  # unknown: ignored
        ws.push("not json")
        ws.push({"type": "error", "code": "bad_frame", "message": "metrics.cpu: must be a number"})
        ws.push({"type": "ack", "seq": 600})
        ws.close_by_server(4003, "key revoked")
    assert a.buffer.first_seq == 601 and len(a.buffer) == 5
    with pytest.raises(agent.AgentStop) as info:
        a._after_close(conn)
    assert "revoked" in str(info.value) and "4003" in str(info.value)
    messages = [r.getMessage() for r in caplog.records]
    assert any("surprise" in m for m in messages) and any("metrics.cpu" in m for m in messages)


async def test_first_sample_sent_after_an_overflow_carries_the_dropped_count(tmp_path):
    a = _agent(tmp_path)
    a.buffer = agent.SampleBuffer(600)
    for i in range(1, 606):  # 1..5 dropped while the server was away
        a.add_sample(1_700_000_000.0 + i, {"cpu": 1.0})
    ws = FakeWebSocket()
    async with trio.open_nursery() as nursery:
        conn = agent._Connection(ws, nursery.cancel_scope)
        nursery.start_soon(a._serve, conn)
        await ws.wait_sent(1)
        ws.push({"type": "ack", "seq": 0})
        first, second = await ws.wait_sent(2), await ws.wait_sent(3)
        dropped = {s["seq"]: s["metrics"]["dropped"] for f in (first, second) for s in f["samples"]
                   if "dropped" in s["metrics"]}
        assert dropped == {6: 5} and first["samples"][0]["seq"] == 6
        protocol.parse_agent_frame(json.dumps(first))
        assert a.buffer.unreported == 0 and a.buffer.reports == {6: 5}
        ws.push({"type": "ack", "seq": 6})
        a.add_sample(1_700_001_000.0, {"cpu": 2.0})
        live = await ws.wait_sent(4)
        assert live["seq"] == 606 and "dropped" not in live["metrics"]
        ws.close_by_server(1000)
    assert a.buffer.reports == {} and a.buffer.first_seq == 7


async def test_connection_without_hello_ack_gives_up(tmp_path, autojump_clock):
    a = _agent(tmp_path)
    ws = FakeWebSocket()
    async with trio.open_nursery() as nursery:
        conn = agent._Connection(ws, nursery.cancel_scope)
        await a._serve(conn)
    assert [f["type"] for f in ws.sent] == ["hello"]
    ended = a._after_close(conn)
    assert ended.up_for is None and ws.closed is None and "no answer to the hello" in ended.what
    assert ended.level == logging.WARNING


# --- the protocol without IO (agent.Link) ------------------------------------------------------------------------


def _link(first=1, last=0, maxlen=10_000):
    buffer = agent.SampleBuffer(maxlen)
    _fill(buffer, first, last)
    return agent.Link(buffer)


def _ack(seq):
    return json.dumps({"type": "ack", "seq": seq})


def test_link_sends_nothing_before_the_hello_ack_then_what_the_server_lacks():
    link = _link(1, 604)
    assert not link.hello_acked
    assert link.receive(_ack(3)) == agent.Acked(3, first=True, freed=3)  # the server has 1..3
    assert link.hello_acked and link.hello_ack_seq == 3 and link.buffer.first_seq == 4
    frames = list(link.frames())
    assert [last for _, last in frames] == [503, 604]  # batches of 500, oldest first
    parsed = [protocol.parse_agent_frame(text) for text, _ in frames]
    assert [s.seq for s in parsed[0].items] == list(range(4, 504)) and len(parsed[1].items) == 101
    for _, last in frames:
        link.sent(last)
    assert link.first_frame_last_seq == 503 and list(link.frames()) == []  # all sent: nothing more
    _fill(link.buffer, 605, 605)
    (text, last), = link.frames()
    assert last == 605 and json.loads(text)["type"] == "sample"  # a live sample goes alone
    assert link.receive(_ack(600)) == agent.Acked(600, first=False, freed=597)
    assert (link.acked_seq, link.buffer.first_seq) == (600, 601)


def test_link_reads_server_frames_without_trusting_them():
    link = _link()
    assert link.receive(json.dumps({"type": "error", "code": "bad_frame", "message": "x\ny"})) == \
        agent.ServerError("'bad_frame': 'x\\ny'")  # quoted: a newline cannot forge a log line
    assert link.receive(json.dumps({"type": "command", "id": "c1", "action": "reboot", "expires": 5.0})) == \
        agent.CommandRequest("c1", "reboot", 5.0)
    for frame in ({"type": "command", "id": ""}, {"type": "command", "id": "x" * 65}, {"type": "command"}):
        event = link.receive(json.dumps(frame))
        assert isinstance(event, agent.Ignored) and event.note and "without a valid id" in event.why
    for bad in ("not json", "[1, 2]", '"ack"', "{}"):
        event = link.receive(bad)
        assert isinstance(event, agent.Ignored) and event.note and "not a JSON object with a type" in event.why
    assert link.receive(json.dumps({"type": "surprise"})) == agent.Ignored(
        "ignoring a server frame of unknown type 'surprise'", note=False)  # newer servers: debug only
    for seq in (-1, True, 1.5, "3", None):
        event = link.receive(json.dumps({"type": "ack", "seq": seq}))
        assert isinstance(event, agent.Ignored) and "bad seq" in event.why
    assert not link.hello_acked


def test_link_lost_samples_ride_on_the_next_sample_sent():
    link = _link(1, 605, maxlen=600)  # 1..5 dropped while the server was away
    link.receive(_ack(0))
    assert link.loss_to_report and link.report_loss() == 6 and not link.loss_to_report
    first_text, _ = next(link.frames())
    first = protocol.parse_agent_frame(first_text).items[0]
    assert first.seq == 6 and first.metrics["dropped"] == 5


def _refused_connection(link, code, *, acked=None):
    """One connection: the hello's ack, everything sent, then the server closes with `code`."""
    link.connected()
    link.receive(_ack(0))
    for _, last in link.frames():
        link.sent(last)
    if acked is not None:
        link.receive(_ack(acked))
    return link.closed(code)


def test_link_lets_go_of_samples_the_server_refuses_three_times_in_a_row():
    link = _link(1, 3)
    assert _refused_connection(link, 1007) is None and _refused_connection(link, 1008) is None
    assert link.strikes == 2 and len(link.buffer) == 3
    assert _refused_connection(link, 1009) == agent.Discarded(first=1, last=3, strikes=3, count=3)
    assert len(link.buffer) == 0 and link.strikes == 0
    assert sorted(link.buffer.limbo) == [1, 2, 3]  # sent: lost only once the server says it lacks them
    link.connected()
    link.receive(_ack(0))
    assert (link.buffer.dropped, link.buffer.unreported) == (3, 3)  # counted, and the server will be told


def test_link_strikes_only_count_refusals_without_progress():
    link = _link(1, 3)
    assert _refused_connection(link, 1007) is None and link.strikes == 1
    assert _refused_connection(link, 1000) is None and link.strikes == 1  # a normal close is no refusal
    link.connected()
    link.receive(_ack(0))
    assert link.closed(1008) is None and link.strikes == 1  # nothing was sent on it
    _fill(link.buffer, 4, 6)
    assert _refused_connection(link, 1007, acked=2) is None  # progress: the server takes samples again
    assert link.strikes == 0 and link.buffer.first_seq == 3


async def test_unreachable_server_keeps_collecting_then_401_stops(tmp_path, autojump_clock, caplog):
    a = _agent(tmp_path, AGENT_INTERVAL="1")
    attempts = []

    async def fake_connect():
        attempts.append((trio.current_time(), len(a.buffer)))
        if len(attempts) <= 4:
            raise OSError(111, "Connection refused")
        raise trio_websocket.ConnectionRejected(401, (), None)

    a._connect_and_serve = fake_connect
    with caplog.at_level(logging.INFO, logger="mbot.agent"):
        assert await a.run() == 1
    assert len(attempts) == 5
    assert attempts[-1][1] > attempts[0][1]  # samples kept coming while disconnected
    gaps = [b[0] - a_[0] for a_, b in zip(attempts, attempts[1:])]
    assert gaps[0] == pytest.approx(1.0) and all(1.0 <= g <= 60.0 for g in gaps)
    assert any("secret rejected" in r.getMessage() for r in caplog.records)


async def test_other_rejection_retries(tmp_path, autojump_clock):
    a = _agent(tmp_path)
    calls = []

    async def fake_connect():
        calls.append(1)
        if len(calls) == 1:
            raise trio_websocket.ConnectionRejected(503, (), None)
        raise agent.AgentStop("stop")

    a._connect_and_serve = fake_connect
    assert await a.run() == 1
    assert len(calls) == 2


def _fake_proc(root: Path, busy: int, idle: int, rx: int, sectors: int) -> None:
    """A /proc as Linux writes it (the parts the sample reads), for AGENT_HOST_PROC-style reading."""
    (root / "net").mkdir(parents=True, exist_ok=True)
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time is inside user already
    (root / "stat").write_text(f"cpu  {2 * busy} 0 0 {2 * idle} 0 0 0 0 {busy} 0\n"
                               f"cpu0 {2 * busy} 0 0 0 0 0 0 0 {busy} 0\ncpu1 0 0 0 {2 * idle} 0 0 0 0 0 0\n"
                               "intr 1 2 3\nbtime 1700000000\nprocesses 10\n")
    (root / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\n"
                                  "MemAvailable:    4000000 kB\nSwapCached:            0 kB\n"
                                  "SwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n")
    (root / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed\n"
        f"    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: {rx} 5 0 0 0 0 0 0 {rx // 2} 5 0 0 0 0 0 0\n"
        f"  veth3f1a2b: {rx} 5 0 0 0 0 0 0 {rx} 5 0 0 0 0 0 0\n")
    disks = sorted(os.listdir("/sys/block"))[:1] if os.path.isdir("/sys/block") else []
    lines = [f"   8       0 {name} 1 0 {sectors} 0 1 0 {2 * sectors} 0 0 0 0 0 0 0 0 0 0" for name in disks]
    lines.append(f"   8       1 notadisk1 1 0 {sectors} 0 1 0 {sectors} 0 0 0 0 0 0 0 0 0 0")  # a partition
    (root / "diskstats").write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc as Linux writes it")
def test_a_sample_reads_proc_as_psutil_counts_it_in_any_thread(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(agent.psutil, "PROCFS_PATH", str(tmp_path))
    _fake_proc(tmp_path, busy=100, idle=100, rx=1000, sectors=10)
    collector = agent.Collector(gpu=False, processes=False)
    collector.collect()
    _fake_proc(tmp_path, busy=130, idle=190, rx=6000, sectors=20)  # CPU: 60 busy of 240 (cpu0 60 of 60)
    taken = []
    # Another thread, as when samples are more than 10 s apart (trio's worker threads end after 10 s idle):
    # psutil.cpu_percent's memory is per thread, and would read 0 % here.
    worker = threading.Thread(target=lambda: taken.append(collector.collect()))
    worker.start()
    worker.join()
    m = taken[0]
    assert m["cpu"] == 25.0 and m["cpu_cores"] == [100.0, 0.0]
    assert m["ram"] == {"used": 12_000_000 * 1024, "total": 16_000_000 * 1024}
    assert m["swap"] == {"used": 500_000 * 1024, "total": 2_000_000 * 1024}
    # Loopback and a container's veth (its traffic is the bridge's and the uplink's again) are not the host's.
    assert set(m["net"]) == {"eth0"} and m["net"]["eth0"]["rx"] > m["net"]["eth0"]["tx"] > 0
    if os.path.isdir("/sys/block") and os.listdir("/sys/block"):  # whole disks only, as psutil counts them
        read, written = collector._disk_counters()
        assert (read, written) == (20 * 512, 40 * 512)
        assert (read, written) == tuple(agent.psutil.disk_io_counters(perdisk=False)[2:4])
    protocol.validate_metrics(m)
