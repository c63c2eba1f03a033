"""Processes: the agent's collection against real processes the test starts (a busy loop, an allocation), VRAM per
process through the fake pynvml, the snapshot over real TLS to the real server, and what the chat (fake Bot API)
and the CLI show, with a hostile agent's names and command lines next to the honest ones."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from fakebot import FakeBot
from helpers import ROOT, ack_reaching, add_host, hello_frame, load_agent, open_tls, receive_json, upgrade
from test_agent_e2e import agent_config, run_in
from test_bot import ALICE, BOB, buttons, fake, last_message_id, press, say, server  # noqa: F401 (fixtures)
from mbot import cli, processes, protocol, store
from mbot.model import Host, StoredSnapshot
from mbot.telegram import views

agent = load_agent()

MARKER = "mbot-test-busy-loop"
# Spins for 0.3 s of its own CPU time before saying so (so a scan after "ready" must see it busy), then forever.
BUSY = (f"# {MARKER}\nimport sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('ready', flush=True)\nwhile True: pass\n")
# Writes 128 MiB (bytes of 'x', so every page is touched and counts in RSS), then waits for its stdin to close.
ALLOC = "import sys\ndata = b'x' * (128 << 20)\nprint('ready', flush=True)\nsys.stdin.read()\n"


def start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


@pytest.fixture
def children():
    started: list[subprocess.Popen] = []

    def _start(code: str, *args: str) -> subprocess.Popen:
        child = start(code, *args)
        started.append(child)
        return child

    yield _start
    for child in started:
        child.kill()
        child.communicate(timeout=10)  # reaps it and closes its pipes


def by_pid(items: list[dict], pid: int) -> dict:
    found = [item for item in items if item["pid"] == pid]
    assert found, f"pid {pid} not in the snapshot"
    return found[0]


# --- the agent: reading /proc, ranking --------------------------------------------------------------------------


def stat_line(pid: int, comm: bytes, utime: int, stime: int, start: int, rss_pages: int) -> bytes:
    fields = ["S"] + ["0"] * 49  # field 3 on
    fields[11], fields[12], fields[19], fields[21] = str(utime), str(stime), str(start), str(rss_pages)
    return b"%d (%s) " % (pid, comm) + " ".join(fields).encode()


def test_proc_stat_is_read_after_the_last_parenthesis():
    # A program may name itself anything: spaces and parentheses in comm must not shift the fields.
    proc = agent.parse_proc_stat(42, stat_line(42, b"a) (b c) R 1", 250, 50, 999, 10), 100.0, 4096)
    assert proc == agent.ProcessStat(42, 999.0, "a) (b c) R 1", 3.0, 40960)
    assert agent.parse_proc_stat(42, b"42 no parentheses", 100.0, 4096) is None
    assert agent.parse_proc_stat(42, b"42 (x) S 1 2", 100.0, 4096) is None  # cut short
    mine = agent.parse_proc_stat(os.getpid(), Path("/proc/self/stat").read_bytes(), 100.0, 4096)
    assert mine is not None and mine.rss > 0 and mine.cpu_time > 0


def P(pid: int, cpu_time: float, rss: int = 0, start: float = 1.0) -> "agent.ProcessStat":
    return agent.ProcessStat(pid, start, f"p{pid}", cpu_time, rss)


def test_ranking_is_the_union_of_the_tops_by_cpu_memory_and_vram():
    before = {1: P(1, 10.0), 2: P(2, 5.0), 3: P(3, 1.0, start=1.0)}
    now = {1: P(1, 11.0, rss=100), 2: P(2, 5.0, rss=900), 3: P(3, 0.5, start=7.0), 4: P(4, 0.2), 5: P(5, 0.0),
           6: P(6, 100.0, rss=1)}
    ranked = agent.rank_processes(now, before, 2.0, 4, vram={5: 1 << 20, 99: 1 << 30}, top=1)
    cpu = {proc.pid: round(value, 1) for proc, value in ranked}
    # 6 is new since the last scan and used 100 s in 2 s: capped at 4 cores. Top by CPU: 6; by memory: 2; by VRAM:
    # 5, though it uses no CPU and no memory. 99 holds VRAM but is not in this scan (another pid namespace): out.
    assert cpu == {6: 400.0, 2: 0.0, 5: 0.0}
    assert [proc.pid for proc, _ in ranked] == [6, 2, 5]
    ranked = agent.rank_processes(now, before, 2.0, 4, vram={}, top=15)
    cpu = {proc.pid: round(value, 1) for proc, value in ranked}
    # 1 used 1 s in 2 s; 3's pid was reused (another start time): its 0.5 s count whole; 5 is idle and has no RSS.
    assert cpu == {6: 400.0, 1: 50.0, 3: 25.0, 4: 10.0, 2: 0.0}


def test_a_busy_loop_and_an_allocation_rank_on_top(children):
    # /proc as on Linux, and psutil as on other systems (no /proc at that path): both primed before the children
    # start, so CPU is measured from here.
    tables = {"proc": agent.ProcessTable(), "psutil": agent.ProcessTable(procfs="/nonexistent")}
    busy, alloc = children(BUSY), children(ALLOC)
    assert busy.stdout.readline() == "ready\n" and alloc.stdout.readline() == "ready\n"
    for way, table in tables.items():
        items = table.top()
        assert len(items) <= 3 * agent.TOP_PROCESSES, way
        hot = by_pid(processes.ranked(items, "cpu", processes.LIST), busy.pid)
        # It used 0.3 s of CPU at least since the tables were primed; how long that took depends on the load.
        assert hot["cpu"] > 1.0 and MARKER in hot["cmd"] and hot["name"].startswith("python"), way
        assert hot["user"] == pwd.getpwuid(os.getuid()).pw_name, way
        big = by_pid(processes.ranked(items, "rss", processes.LIST), alloc.pid)
        assert big["rss"] >= 128 << 20, way
        # What the agent sends is what the server takes.
        frame = json.dumps({"type": "snapshot", "kind": "processes", "v": 1, "ts": 1.7e9, "items": items})
        assert protocol.parse_agent_frame(frame, cores=os.cpu_count()).items, way


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the /proc way")
def test_a_process_that_ends_leaves_the_list_and_its_file_is_closed(children):
    # The table keeps each process's /proc/PID/stat open between lists (a pread costs half an open and a read):
    # one that ends must leave the list, its file must be closed, and a busy one started later must be seen.
    def stat_files() -> set[str]:  # the /proc/PID/stat files this process holds open
        held = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # the listing's own descriptor, gone
                continue
            if target.startswith("/proc/") and target.endswith("/stat"):
                held.add(target)
        return held

    idle = children(ALLOC.replace("128 << 20", "64 << 20"))
    assert idle.stdout.readline() == "ready\n"
    table = agent.ProcessTable()
    assert any(item["pid"] == idle.pid for item in table.top())  # 64 MiB: among the top by memory
    assert f"/proc/{idle.pid}/stat" in stat_files()
    idle.kill()
    idle.communicate(timeout=10)
    busy = children(BUSY)
    assert busy.stdout.readline() == "ready\n"
    items = table.top()
    assert idle.pid not in {item["pid"] for item in items} and by_pid(items, busy.pid)["cpu"] > 1.0
    assert f"/proc/{idle.pid}/stat" not in stat_files() and f"/proc/{busy.pid}/stat" in stat_files()
    table.close()
    assert f"/proc/{busy.pid}/stat" not in stat_files()


@pytest.mark.skipif(not Path("/proc/self/schedstat").exists(), reason="the /proc way, with schedstat")
def test_an_idle_process_that_starts_working_is_seen_at_once(children):
    # An idle single-threaded process's stat is not read again while its schedstat says it has not run: the first
    # list after it starts working must still show its CPU.
    waits = children("import sys, time\nprint('idle', flush=True)\nsys.stdin.readline()\n" + BUSY.split("\n", 1)[1])
    assert waits.stdout.readline() == "idle\n"
    table = agent.ProcessTable()
    for _ in range(3):
        table.top()
    assert table._unread.get(waits.pid)  # its stat was left unread: the case under test
    waits.stdin.write("go\n")
    waits.stdin.flush()
    assert waits.stdout.readline() == "ready\n"
    assert by_pid(table.top(), waits.pid)["cpu"] > 1.0


def test_vram_per_process_through_fake_nvml(children, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakes"))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    import pynvml

    pynvml.reset()
    sleeper = children(ALLOC.replace("128 << 20", "1"))  # small and idle: ranks by VRAM alone
    assert sleeper.stdout.readline() == "ready\n"
    # A process with a compute and a graphics context on GPU 0 is in both lists: counted once; plus GPU 1.
    pynvml.DEVICES[0]["compute"] = [(sleeper.pid, 3 << 30), (os.getpid(), 1 << 20), (123, None)]
    pynvml.DEVICES[0]["graphics"] = [(sleeper.pid, 3 << 30)]
    pynvml.DEVICES[1]["compute"] = [(sleeper.pid, 1 << 30)]
    pynvml.FAILING = {(1, "nvmlDeviceGetGraphicsRunningProcesses")}  # NotSupported on some boards: the rest counts
    collector = agent.Collector(gpu=True)
    try:
        assert collector.gpu_processes() == {sleeper.pid: 4 << 30, os.getpid(): 1 << 20}
        version, items = collector.snapshots()["processes"]
    finally:
        collector.close()
    assert version == 1 and by_pid(items, sleeper.pid)["vram"] == 4 << 30
    ranked = processes.ranked(items, "vram", processes.LIST)
    assert [item["pid"] for item in ranked] == [sleeper.pid, os.getpid()]
    assert "vram" not in [i for i in items if i["pid"] not in (sleeper.pid, os.getpid())][0]


class ListCollector:
    def collect(self):
        return {"cpu": 1.0}

    def snapshots(self):
        return {"processes": (1, [{"pid": 1, "name": "init", "user": "root", "cmd": "/sbin/init", "cpu": 0.5,
                                   "rss": 1 << 20}])}

    def host_facts(self):
        return {}

    def close(self):
        pass


def test_the_agent_keeps_one_snapshot_per_kind_and_paces_them():
    cfg = agent.AgentConfig(secret="s", server="127.0.0.1", interval=0.1)
    a = agent.Agent(cfg, ListCollector())
    assert a._collect_and_store(1.7e9)
    a._collect_and_store(1.7e9 + 0.1)  # within a second of the last: no new snapshot (the server's budget)
    [(kind, (_, frame))] = a._snapshots.items()  # the newest per kind, nothing queued behind it
    snap = protocol.parse_agent_frame(frame, cores=1)
    assert kind == "processes" and isinstance(snap, protocol.Snapshot) and snap.ts == 1.7e9
    assert snap.items[0]["cmd"] == "/sbin/init"


def test_agent_processes_0_turns_it_off():
    cfg = agent.config_from_env({"AGENT_SECRET": "s", "AGENT_SERVER_IP": "h", "AGENT_PROCESSES": "0"}, {})
    assert cfg.processes is False
    assert agent.config_from_env({"AGENT_SECRET": "s", "AGENT_SERVER_IP": "h"}, {}).processes is True
    with pytest.raises(agent.ConfigError, match="AGENT_PROCESSES"):
        agent.config_from_env({"AGENT_SECRET": "s", "AGENT_SERVER_IP": "h", "AGENT_PROCESSES": "maybe"}, {})
    assert "processes" not in agent.Collector(gpu=False, processes=False).snapshots()


# --- the server: the item's optional vram ------------------------------------------------------------------------


def test_vram_is_optional_and_bounded():
    def parse(**extra):
        item = {"pid": 1, "name": "x", "cpu": 1, "rss": 1, **extra}
        return protocol.parse_agent_frame(json.dumps({"type": "snapshot", "kind": "processes", "v": 1,
                                                      "ts": 1.7e9, "items": [item]}))

    assert "vram" not in parse().items[0] and parse(vram=1 << 30).items[0]["vram"] == 1 << 30
    for bad in (-1, 2.0**61, "lots", True):
        with pytest.raises(protocol.ProtocolError, match="vram") as info:
            parse(vram=bad)
        assert info.value.close_code == protocol.CLOSE_INVALID


# --- end to end: real agent, real server over TLS, the fake Bot API, the CLI ---------------------------------------


async def wait_for_snapshot(server, settings, host_id: int, pid: int) -> StoredSnapshot:
    """Until the host's stored process list holds `pid`: woken by each commit, never by polling."""
    with trio.fail_after(30):
        while True:
            conn = store.connect(settings.db_path, readonly=True)
            try:
                snap = store.latest_snapshot(conn, host_id, processes.KIND)
            finally:
                conn.close()
            if snap is not None and any(item.get("pid") == pid and item.get("cpu", 0) > 0 for item in snap.items):
                return snap
            await server.writer.next_commit()


async def test_top_from_the_real_agent_in_chat_and_cli(fake: FakeBot, server, settings, nursery, tmp_path,
                                                       children, monkeypatch, capsys):
    key = add_host(settings, "box1", owner=ALICE)
    busy = children(BUSY)
    assert await trio.to_thread.run_sync(busy.stdout.readline) == "ready\n"
    collector = await trio.to_thread.run_sync(lambda: agent.Collector(gpu=False))
    scope = await run_in(nursery, agent_config(server, key.secret, tmp_path), collector)
    await wait_for_snapshot(server, settings, key.host_id, busy.pid)
    scope.cancel()

    # The CLI, as the admin runs it on the server, reads the same list.
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    assert await trio.to_thread.run_sync(cli.main, ["top", "box1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("box1: ") and "top CPU:" in text and MARKER in text
    assert await trio.to_thread.run_sync(cli.main, ["top", "box1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["host"] == "box1" and busy.pid in [item["pid"] for item in report["top_cpu"]]

    top = await say(fake, ALICE, "/top box1")
    assert "<b>Top CPU</b>" in top["text"] and "<b>Top memory</b>" in top["text"]
    # Its command line, cut to the view's 60 characters (how much of the marker fits depends on where Python is).
    assert f"pid {busy.pid}\n    <code>{f'{sys.executable} -c # {MARKER}'[:50]}" in top["text"]
    card = await say(fake, ALICE, "/status box1")
    # The card is compact: no commands, no pids.
    assert "<b>Top CPU</b>" in card["text"] and MARKER not in card["text"] and "pid " not in card["text"]
    assert "⚙️ Processes" in buttons(card)
    opened = await press(fake, ALICE, buttons(card)["⚙️ Processes"], last_message_id(fake, ALICE), "sendMessage")
    assert f"pid {busy.pid}" in opened["text"] and set(buttons(opened)) == {"🔄 Refresh"}
    # Refresh edits that message with the newest list (here one the test stores, since the agent has stopped).
    conn = store.connect(settings.db_path)
    try:
        with conn:
            store.put_snapshot(conn, key.host_id, processes.KIND, 1, time.time(), time.time(), json.dumps(
                [{"pid": 4242, "name": "newcomer", "user": "bob", "cmd": "newcomer --now", "cpu": 3.0, "rss": 1.0}]))
    finally:
        conn.close()
    refreshed = await press(fake, ALICE, buttons(opened)["🔄 Refresh"], last_message_id(fake, ALICE))
    assert "pid 4242" in refreshed["text"] and f"pid {busy.pid}" not in refreshed["text"]
    # Bob forges Alice's button in his own chat: the answer a missing host gets.
    assert "No such host" in (await say(fake, BOB, "/top box1"))["text"]
    bobs_message = last_message_id(fake, BOB)
    for data in (f"procs:{key.host_id}", f"procs:{key.host_id}:r"):
        fake.messages[(BOB, bobs_message)]["text"] = "reset"  # so the same edit twice is not "not modified"
        forged = await press(fake, BOB, data, bobs_message)
        assert forged["text"] == "No such host. /hosts lists yours."


async def test_a_host_without_a_process_list(fake: FakeBot, server, settings, monkeypatch, capsys):
    add_host(settings, "old", owner=ALICE)
    assert "has sent no process list yet" in (await say(fake, ALICE, "/top old"))["text"]
    assert "⚙️ Processes" not in buttons(await say(fake, ALICE, "/status old"))
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    assert await trio.to_thread.run_sync(cli.main, ["top", "old", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"host": "old", "received": None}


# --- the attacker's side: what a malicious agent can put in a process list -------------------------------------


HOSTILE = [{"pid": i, "name": "<script>&" + "<" * 200, "user": "<b>" * 30, "cmd": "\x1b[2J<i>" + "&" * 600,
            "cpu": 50.0 + i, "rss": 1 << 30, "vram": 1 << 30} for i in range(45)]


async def test_hostile_names_and_commands_stay_escaped_and_bounded(fake: FakeBot, server, settings, nursery):
    key = add_host(settings, "evil", owner=ALICE)
    stream = await open_tls(server.port)
    try:
        ws = await upgrade(nursery, stream, key.secret)
        await ws.send_message(hello_frame(cpu_count=64))
        await receive_json(ws)
        await ws.send_message(json.dumps({"type": "snapshot", "kind": "processes", "v": 1, "ts": 1.7e9,
                                          "items": HOSTILE}))
        await ws.send_message(json.dumps({"type": "sample", "seq": 1, "ts": time.time(),
                                          "metrics": {"cpu": 1.0}}))
        await ack_reaching(ws, 1)  # the snapshot came first on this connection: it is committed too
        # The fake Bot API refuses what Telegram would: over 4096 characters, or HTML it cannot parse.
        top = (await say(fake, ALICE, "/top evil"))["text"]
        card = (await say(fake, ALICE, "/status evil"))["text"]
        for text in (top, card):
            assert len(text) <= views.MESSAGE_LIMIT and "<script>" not in text and "\x1b" not in text
            assert "&lt;script&gt;&amp;" in text and "<b>Top CPU</b>" in text
        assert "cut to fit one message" in top  # 45 members with long command lines: more than one message
    finally:
        await trio.aclose_forcefully(stream)


def test_the_cli_prints_no_escape_sequences_even_from_a_damaged_row():
    host = Host(1, "box\x1b]0;pwned\x07", 0, "k", 0.0, {}, 1, 0, None, None, {}, 0)
    snap = StoredSnapshot(1, "processes", 1, 1.0, 1.0, [{"pid": 7, "name": "x", "user": "\x1b[31m", "cpu": 5,
                                                        "rss": 1, "cmd": "rm\x1b[2J -rf"}, {"pid": "bad"}])
    text = processes.as_text(host, snap, 2.0)
    assert "\x1b" not in text and "\x07" not in text and "rm\ufffd[2J -rf" in text
    assert processes.as_json(host, snap, 2.0)["top_cpu"][0]["pid"] == 7


def test_the_process_list_is_paced_to_its_share_of_a_core():
    table = agent.ProcessTable()
    assert table.due(table.scanned_at)  # the first list comes with the first sample
    table.top()
    wait = table.cost / agent.PROCESSES_CPU_SHARE  # a scan of ~100 processes costs a few ms: a few seconds
    assert table.cost > 0 and not table.due(table.scanned_at + 0.9 * wait) and table.due(table.scanned_at + 1.01 * wait)


def test_the_card_shows_a_current_list_and_says_when_it_is_old():
    now = 10_000.0
    host = Host(1, "box1", 1, "k", 0.0, {"interval": 5.0, "agent": "0.1.0"}, 1, 1, now, now, {"cpu": 5.0}, 1)
    items = [{"pid": 1, "name": "db", "user": "pg", "cmd": "db -D /data", "cpu": 12.0, "rss": 3 << 30},
             {"pid": 2, "name": "idle", "user": "u", "cmd": "idle", "cpu": 0.0, "rss": 0.0}]

    def card(age: float) -> str:
        return views.host_card(host, now, StoredSnapshot(1, "processes", 1, now - age, now - age, items))

    assert "<b>Top CPU</b>\n<b>db</b> · pg · 12 % · 3.0 GiB\n<b>Top memory</b>" in card(5)
    assert "idle" not in card(5)  # no CPU, no memory: in no ranking
    assert "<b>Top CPU</b> (1 min 40 s ago)" in card(100)  # paced on a big host: shown, with its age
    assert "Top CPU" not in card(600) and "Top CPU" not in views.host_card(host, now)
    text, _ = views.processes_view(host, StoredSnapshot(1, "processes", 1, now - 600, now - 600, items), now)
    assert "not current" in text and "pid 1\n    <code>db -D /data</code>" in text
