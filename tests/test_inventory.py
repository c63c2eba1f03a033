"""The machine's inventory (Diagnostics): the agent reads it, hello and `inventory` snapshots carry it, the server
bounds it, /info, the card's button and `python -m mbot info` show it."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import trio

from helpers import ROOT, add_host, hello_frame, load_agent, read_db, receive_json, wait_for_samples
from mbot import protocol
from mbot.model import Host
from mbot.protocol import ProtocolError
from mbot.telegram import views
from test_agent_e2e import agent_config
from test_bot import ALICE, buttons, fake, press, say, start_server  # noqa: F401  (fake is a fixture)

agent = load_agent()

INVENTORY = {
    "cpu": {"model": "AMD EPYC 7763 64-Core Processor", "cores": 8, "threads": 16},
    "mem_total": 16 << 30, "swap_total": 2 << 30, "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-18-amd64",
    "arch": "x86_64", "virt": "kvm", "boot_time": 1764000000.0, "agent": "0.1.0",
    "disks": [{"mount": "/", "device": "/dev/vda1", "fs": "ext4", "total": 100 << 30}],
    "nics": [{"name": "eth0", "addrs": ["192.0.2.2/24", "fd00::2"], "mac": "02:fc:00:00:00:01", "speed": 10000,
              "up": True}],
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "vendor": "nvidia", "driver": "550.54.15", "vram": 80 << 30}],
}


def host_with(inventory, name="box1") -> Host:
    return Host(id=7, name=name, owner=1, key_id="k" * 16, created=0.0, facts={"inventory": inventory}, epoch=1,
                last_seq=0, last_ts=None, last_seen=None, last_metrics={}, samples_count=0)


# --- what the agent reads ----------------------------------------------------------------------------------------


def test_a_filesystem_whose_size_drifts_sends_no_new_inventory():
    disk = {"mount": "/tank", "device": "tank/data", "fs": "zfs", "total": 1000 << 30}
    old = {**INVENTORY, "disks": [disk]}
    assert not agent.inventory_differs(old, {**old, "disks": [{**disk, "total": 1010 << 30}]})
    assert agent.inventory_differs(old, {**old, "disks": [{**disk, "total": 2000 << 30}]})
    assert agent.inventory_differs(old, {**old, "disks": [disk, {"mount": "/mnt", "total": 1}]})
    assert agent.inventory_differs(old, {**old, "kernel": "6.2"}) and agent.inventory_differs(None, old)


def test_cpu_model_from_cpuinfo_on_x86_and_arm():
    assert agent.cpu_model("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7763\n") == \
        "AMD EPYC 7763"
    assert agent.cpu_model("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4\n") \
        == "BCM2835"


def test_virtualisation_asks_systemd_detect_virt_first_and_survives_without_it():
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="kvm\n", stderr="")

    assert agent.virtualisation(run) == "kvm" and calls == [["systemd-detect-virt"]]

    def missing(argv, **kwargs):
        raise FileNotFoundError(argv[0])

    assert isinstance(agent.virtualisation(missing), str)  # the fallbacks answer something, never raise


def test_the_agents_inventory_passes_the_servers_checks():
    collector = agent.Collector(gpu=False)
    try:
        inventory = collector.inventory()
    finally:
        collector.close()
    assert inventory["cpu"]["threads"] >= 1 and inventory["mem_total"] > 0 and inventory["kernel"]
    assert any(d["mount"] == "/" for d in inventory["disks"])
    assert protocol.inventory(inventory) == json.loads(json.dumps(inventory))
    assert len(json.dumps(inventory)) < 8192  # small: it rides in every hello


# --- what the server accepts -------------------------------------------------------------------------------------


def test_hostile_inventory_texts_are_cleaned_and_cut():
    hostile = copy.deepcopy(INVENTORY)
    hostile["os"] = "Evil\nOS <b>" + "x" * 500
    hostile["nics"][0]["name"] = "eth0\x1b[31m"
    hostile["unknown"] = {"nested": ["kept out"]}
    clean = protocol.inventory(hostile)
    assert "\n" not in clean["os"] and len(clean["os"]) <= 128 and "\x1b" not in clean["nics"][0]["name"]
    assert "unknown" not in clean


@pytest.mark.parametrize("change, code", [
    (lambda inv: inv.update(nics=[{"name": f"veth{i}"} for i in range(65)]), protocol.CLOSE_POLICY),
    (lambda inv: inv["nics"][0].update(addrs=["10.0.0.1"] * 17), protocol.CLOSE_POLICY),
    (lambda inv: inv.update(mem_total=-1), protocol.CLOSE_INVALID),
    (lambda inv: inv["cpu"].update(cores="8"), protocol.CLOSE_INVALID),
    (lambda inv: inv["nics"][0].update(up="yes"), protocol.CLOSE_INVALID),
    (lambda inv: inv.update(disks=[{"mount": "/" + "d" * 127, "device": "x" * 128, "fs": "f" * 32,
                                    "total": 1} for _ in range(64)],
                            nics=[{"name": "n" * 128, "addrs": ["a" * 64] * 16} for _ in range(64)]),
     protocol.CLOSE_POLICY),
])
def test_inventory_out_of_bounds_is_refused(change, code):
    bad = copy.deepcopy(INVENTORY)
    change(bad)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_agent_frame(hello_frame(inventory=bad))
    assert caught.value.close_code == code


def test_an_inventory_snapshot_holds_one_inventory():
    frame = {"type": "snapshot", "kind": "inventory", "v": 1, "ts": 1764000000.0, "items": [INVENTORY, INVENTORY]}
    with pytest.raises(ProtocolError):
        protocol.parse_agent_frame(json.dumps(frame))


# --- what people see ---------------------------------------------------------------------------------------------


def test_the_view_says_what_the_machine_is():
    text, keyboard = views.inventory_view(host_with(INVENTORY), now=1764000000.0 + 3 * 86400)
    for part in ("AMD EPYC 7763 64-Core Processor", "8 cores, 16 threads", "RAM 16.0 GiB", "/ · ext4 /dev/vda1",
                 "eth0 up · 10 Gbit/s · 192.0.2.2/24, fd00::2", "NVIDIA H100 80GB HBM3 · 80.0 GiB VRAM · driver 550",
                 "kernel 6.1.0-18-amd64", "Virtualisation: kvm", "3 d ago", "agent 0.1.0"):
        assert part in text
    assert buttons({"reply_markup": keyboard}) == {"Status card": "card:7"}


def test_the_view_escapes_and_stays_within_a_message():
    hostile = copy.deepcopy(INVENTORY)
    hostile["cpu"]["model"] = "<b>pwn</b>"
    hostile["nics"] = [{"name": f"<i>{i}" + "n" * 120, "addrs": ["a" * 64] * 6, "mac": "m" * 64} for i in range(64)]
    text, _ = views.inventory_view(host_with(protocol.inventory(hostile), name="<x>"), now=1764000000.0)
    assert "<b>pwn" not in text and "&lt;b&gt;pwn" in text and "&lt;x&gt;" in text and "<i>" not in text
    assert len(text) <= 4096 and "more" in text


def test_a_host_without_inventory_says_why():
    text, _ = views.inventory_view(host_with(None), now=0.0)
    assert "No inventory" in text


# --- end to end ----------------------------------------------------------------------------------------------------


async def test_inventory_from_the_real_agent_to_info_and_the_diagnostics_button(nursery, settings, fake, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakes"))
    import pynvml

    pynvml.reset()
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    server = await start_server(nursery, settings, fake)
    key = add_host(settings, "box1", owner=ALICE)
    collector = agent.Collector(gpu=True)
    runner = agent.Agent(agent_config(server, key.secret, tmp_path), collector)
    await runner.refresh_facts()
    scope = trio.CancelScope()

    async def run():
        with scope:
            await runner.run()

    nursery.start_soon(run)
    await wait_for_samples(server, settings, "box1", 1)
    stored = json.loads(read_db(settings, "SELECT facts FROM hosts")[0][0])["inventory"]
    assert stored["gpus"][0] == {"name": "NVIDIA H100 80GB HBM3", "vendor": "nvidia", "driver": "550.54.15",
                                 "vram": 80 << 30}

    # A disk mounted mid-connection: the next check sends an `inventory` snapshot, which replaces the stored one.
    real = collector.inventory
    monkeypatch.setattr(collector, "inventory", lambda: {**real(), "disks": real()["disks"] + [
        {"mount": "/mnt/new", "device": "/dev/sdz1", "fs": "xfs", "total": 1 << 40}]})
    await runner.check_inventory()
    with trio.fail_after(10):
        while "/mnt/new" not in read_db(settings, "SELECT facts FROM hosts")[0][0]:
            await server.writer.next_commit()
    assert read_db(settings, "SELECT count(*) FROM snapshots WHERE kind = 'inventory'") == [(0,)]  # in the facts

    info = await say(fake, ALICE, "/info box1")
    assert "/mnt/new · xfs /dev/sdz1 · 1.0 TiB" in info["text"] and "NVIDIA H100" in info["text"]
    card = await say(fake, ALICE, "/status box1")
    pressed = await press(fake, ALICE, buttons(card)["🩺 Diagnostics"], 1, method="sendMessage")
    assert pressed["text"] == info["text"]
    scope.cancel()
    collector.close()
    await server.aclose()


async def test_a_bad_inventory_snapshot_is_refused_and_the_hellos_stays(server, settings, connect):
    key = add_host(settings, "box2")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(inventory=INVENTORY))
    await receive_json(ws)
    bad = {"type": "snapshot", "kind": "inventory", "v": 1, "ts": 1764000000.0,
           "items": [{**INVENTORY, "gpus": "lots"}]}
    await ws.send_message(json.dumps(bad))
    error = await receive_json(ws)
    assert error["type"] == "error" and "gpus" in error["message"]
    # The hello's inventory is still there, untouched.
    assert json.loads(read_db(settings, "SELECT facts FROM hosts")[0][0])["inventory"]["virt"] == "kvm"


def test_cli_info_prints_text_and_json(tmp_path):
    from helpers import make_settings
    from mbot import store

    settings = make_settings(tmp_path)
    add_host(settings, "box1")
    conn = store.connect(settings.db_path)
    with conn:
        conn.execute("UPDATE hosts SET facts = ?", (json.dumps({"inventory": INVENTORY}),))
    conn.close()
    env = {"MBOT_DATA_DIR": str(tmp_path), "MBOT_PUBLIC_HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", "import sys; from mbot.cli import main; sys.exit(main(sys.argv[1:]))",
                           "info", "box1", "--json"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "box1", "inventory": INVENTORY, "services": None}
    done = subprocess.run([sys.executable, "-m", "mbot", "info", "box1"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)
    assert done.returncode == 0 and "CPU: AMD EPYC 7763" in done.stdout and done.stdout.startswith("box1\n")
