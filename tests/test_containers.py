"""Containers: the agent's Engine API parsing and polling, the snapshot and series at the edge, /plot, /setalert,
the alert messages, /containers and the card. Engine answers are shaped from the Docker Engine API's documented
responses (GET /containers/json, /containers/{id}/json, /containers/{id}/stats) and from what Podman 4's compat API
answered on this machine. The real engine end to end is tests/test_containers_podman.py."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers import load_agent
from mbot import alerts, containers, plotspec, protocol
from mbot.alerts import AlertEngine
from mbot.model import Host
from mbot.protocol import ProtocolError
from mbot.telegram import alert_commands, alert_text, views
from test_bot import fake  # noqa: F401 (a fixture)

agent = load_agent()


# --- Engine API answers -------------------------------------------------------------------------------------------

def listed(name: str, state: str = "running", status: str = "Up 2 hours", cid: str | None = None,
           image: str = "nginx:1.25", **extra: Any) -> dict[str, Any]:
    """One entry of GET /containers/json?all=1 as Docker documents it (trimmed of ports, mounts, networks)."""
    return {"Id": cid or (name.encode().hex() * 8)[:64], "Names": ["/" + name], "Image": image,
            "ImageID": "sha256:0d1f", "Command": "nginx -g 'daemon off;'", "Created": 1764000000, "State": state,
            "Status": status, "Labels": {}, **extra}


def stats(total: int, system: int, usage: int = 50 << 20, details: dict[str, int] | None = None) -> dict[str, Any]:
    """GET /containers/{id}/stats?stream=false&one-shot=true: one-shot leaves precpu_stats empty."""
    memory: dict[str, Any] = {"usage": usage, "limit": 8 << 30}
    if details is not None:
        memory["stats"] = details
    return {"read": "2026-12-01T22:55:55Z", "cpu_stats": {"cpu_usage": {"total_usage": total},
                                                          "system_cpu_usage": system, "online_cpus": 4},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": memory}


def inspected(restarts: int = 0, health: str | None = None, pid: int = 0) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": "running", "Running": True, "Pid": pid}
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    return {"Id": "x", "RestartCount": restarts, "State": state}


class FakeEngine:
    """The `get` a ContainerWatcher calls: answers by path, counts requests."""

    def __init__(self) -> None:
        self.containers: list[dict[str, Any]] = []
        self.stats: dict[str, dict[str, Any]] = {}
        self.inspect: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def __call__(self, path: str, max_bytes: int) -> Any:
        self.calls.append(path)
        if path.startswith("/containers/json"):
            return self.containers
        cid = path.split("/")[2]
        if "/stats" in path:
            if cid not in self.stats:
                raise agent.EngineError("no such container")
            return self.stats[cid]
        return self.inspect.get(cid, inspected())


def test_summary_reads_documented_list_entries():
    assert agent.container_summary(listed("web", status="Up 2 hours (healthy)")) == {
        "id": listed("web")["Id"], "name": "web", "image": "nginx:1.25", "state": "running", "health": "healthy"}
    assert agent.container_summary(listed("db", status="Up 3 seconds (health: starting)"))["health"] == "starting"
    assert agent.container_summary(listed("db", status="Up 3 minutes (unhealthy)"))["health"] == "unhealthy"
    assert agent.container_summary(listed("job", state="exited", status="Exited (0) 3 weeks ago"))["state"] == "exited"
    # Newer APIs put health in the list itself.
    assert agent.container_summary(listed("api", Health={"Status": "unhealthy"}))["health"] == "unhealthy"
    for junk in (None, [], {"Names": ["/x"]}, {"Id": 5}):
        assert agent.container_summary(junk) is None
    # A name the engine should never allow is cut, and an entry without names gets its short id.
    long = agent.container_summary(listed("n" * 1000))
    assert len(long["name"]) == agent.MAX_CONTAINER_NAME and long["name"].endswith("…")
    assert agent.container_summary({**listed("x"), "Names": []})["name"] == listed("x")["Id"][:12]


def test_stats_cpu_and_memory_as_docker_stats_computes_them():
    # cgroup v1: usage less total_inactive_file; v2: inactive_file; old engines: cache; Podman: no details.
    assert agent.stats_reading(stats(10, 20, 100, {"total_inactive_file": 30, "cache": 50}))[1] == 70
    assert agent.stats_reading(stats(10, 20, 100, {"inactive_file": 40}))[1] == 60
    assert agent.stats_reading(stats(10, 20, 100, {"cache": 25}))[1] == 75
    assert agent.stats_reading(stats(10, 20, 100))[1] == 100
    assert agent.stats_reading(stats(10, 20, 100, {"inactive_file": 500}))[1] == 100  # never below zero
    assert agent.stats_reading(stats(10, 20))[0] == (10, 20)
    assert agent.stats_reading({"cpu_stats": {}, "memory_stats": {}}) == (None, None)
    assert agent.stats_reading("garbage") == (None, None)
    # Percent of the whole host: 1 s of CPU in 4 s of all cores' time is 25 % (docker stats would say 100 %).
    assert agent.cpu_percent((0, 0), (1_000_000_000, 4_000_000_000)) == 25.0
    assert agent.cpu_percent((5, 100), (5, 100)) is None  # no time passed
    assert agent.cpu_percent((9, 0), (5, 100)) is None  # a restarted container's counter went back


def test_watcher_polls_snapshot_and_series():
    engine = FakeEngine()
    web, job = listed("web", status="Up 1 hour (healthy)"), listed("job", state="exited", status="Exited (1)")
    engine.containers = [web, job]
    engine.stats[web["Id"]] = stats(0, 0)
    clock = [0.0]
    watcher = agent.ContainerWatcher(engine, clock=lambda: clock[0])
    first = watcher.poll()
    assert [i["name"] for i in first.items] == ["job", "web"]
    assert first.series == {"job": {"down": 1}, "web": {"down": 0, "mem": 50 << 20}}  # no CPU before 2 readings
    engine.stats[web["Id"]] = stats(2_000_000_000, 8_000_000_000)
    clock[0] = 5.0
    second = watcher.poll()
    assert second.series["web"] == {"down": 0, "cpu": 25.0, "mem": 50 << 20}
    assert second.items[1] == {"name": "web", "image": "nginx:1.25", "state": "running", "health": "healthy",
                               "restarts": 0, "cpu": 25.0, "mem": 50 << 20}
    # No stats for a stopped container; inspects only for new or changed containers (and once a minute).
    assert not any(job["Id"] in call and "stats" in call for call in engine.calls)
    assert sum("/json" in c and "containers/json" not in c for c in engine.calls) == 2


def test_watcher_sees_unhealthy_and_restart_loops():
    engine = FakeEngine()
    api = listed("api")
    engine.containers = [api]
    engine.stats[api["Id"]] = stats(0, 0)
    engine.inspect[api["Id"]] = inspected(0, "unhealthy")
    clock = [0.0]
    watcher = agent.ContainerWatcher(engine, clock=lambda: clock[0])
    assert watcher.poll().series["api"]["down"] == agent.DOWN_UNHEALTHY
    # Restarted by its policy 3 times within 10 minutes (seen as state changes and once-a-minute inspects).
    engine.inspect[api["Id"]] = inspected(0)
    for restarts, state in ((1, "restarting"), (2, "running"), (3, "restarting"), (3, "running")):
        clock[0] += 61
        engine.containers = [listed("api", state=state, cid=api["Id"])]
        engine.inspect[api["Id"]] = inspected(restarts)
        report = watcher.poll()
    assert report.series["api"]["down"] == agent.DOWN_RESTARTING
    assert report.items[0]["restarts"] == 3
    # Ten quiet minutes later it is just running again.
    for _ in range(11):
        clock[0] += 61
        report = watcher.poll()
    assert report.series["api"]["down"] == agent.DOWN_UP


def test_watcher_bounds_a_host_with_600_containers():
    engine = FakeEngine()
    engine.containers = [listed(f"c{i:03d}") for i in range(600)]
    for c in engine.containers:
        engine.stats[c["Id"]] = stats(0, 0)
    watcher = agent.ContainerWatcher(engine)
    report = watcher.poll()
    calls = len(engine.calls)
    assert len(report.items) == agent.MAX_CONTAINERS and len(report.series) == agent.MAX_CONTAINER_DOWN
    # CPU and memory for the first 50 only (a bounded label set); `down`, what alerts watch, for 200.
    assert [name for name, entry in report.series.items() if "mem" in entry] == [
        f"c{i:03d}" for i in range(agent.MAX_CONTAINER_SERIES) if "mem" in report.series[f"c{i:03d}"]]
    assert len(protocol.flatten(protocol.validate_metrics({"containers": report.series}))) <= 300
    # One list, at most a poll's worth of stats and of inspects (the new ones first): never one request per
    # container.
    assert calls <= 1 + agent.CONTAINER_STATS_PER_POLL + agent.CONTAINER_NEWS_PER_POLL + \
        agent.CONTAINER_INSPECTS_PER_POLL
    # Round robin: the next poll measures the next containers.
    engine.calls.clear()
    watcher.poll()
    stats_ids = {c.split("/")[2] for c in engine.calls if "/stats" in c}
    assert len(stats_ids) == agent.CONTAINER_STATS_PER_POLL
    assert engine.containers[0]["Id"] not in stats_ids
    # What the agent sends fits what the server takes.
    snapshot = protocol.parse_agent_frame(json.dumps({"type": "snapshot", "kind": "containers", "v": 1,
                                                      "ts": time.time(), "items": report.items}), cores=4)
    assert len(snapshot.items) == 500
    protocol.validate_metrics({"containers": report.series})


def test_between_lists_a_poll_reads_stats_only_and_events_name_whom_to_inspect():
    engine = FakeEngine()
    web, db = listed("web"), listed("db")
    engine.containers = [web, db]
    engine.stats.update({web["Id"]: stats(0, 0), db["Id"]: stats(0, 0)})
    watcher = agent.ContainerWatcher(engine)
    watcher.poll()
    engine.calls.clear()
    # The event stream said nothing happened: no list, no inspect, stats as always; the states are the last list's.
    engine.stats[web["Id"]] = stats(10**9, 4 * 10**9)
    engine.containers = [listed("web", state="exited", cid=web["Id"]), db]  # unseen without a list
    report = watcher.poll(listing=False)
    assert [c for c in engine.calls if "/stats" not in c] == []
    assert report.series["web"] == {"down": 0, "cpu": 25.0, "mem": 50 << 20}
    # Restarted by its policy between two lists (running then, running now): the event names it, so it is
    # inspected at once and its restart count moves, though its state did not.
    engine.containers = [web, db]
    engine.inspect[db["Id"]] = inspected(restarts=1)
    engine.calls.clear()
    report = watcher.poll(listing=True, touched={db["Id"]})
    assert f"/containers/{db['Id']}/json" in engine.calls and f"/containers/{web['Id']}/json" not in engine.calls
    assert report.items[0]["name"] == "db" and report.items[0]["restarts"] == 1


class FakeCgroups:
    """A /proc and a /sys/fs/cgroup in a temp folder, laid out as Docker's systemd driver lays them out on cgroup
    v2 (system.slice/docker-ID.scope), or as Podman's cgroupfs driver did on this machine's v1 hierarchies
    (libpod_parent/libpod-ID, cpu and cpuacct mounted together)."""

    def __init__(self, root: Path, v2: bool = True) -> None:
        self.proc, self.root, self.v2 = root / "proc", root / "cgroup", v2
        self.now_ns = 1_000_000_000_000

    def clock(self) -> int:
        return self.now_ns

    def add(self, cid: str, pid: int, used_ns: int, mem: int, inactive: int = 0, cgroup_id: str | None = None) -> None:
        """Container `cid` runs as `pid`, in the cgroup named by `cgroup_id` (another container's: a pid seen from
        another namespace)."""
        named = cgroup_id or cid
        (self.proc / str(pid)).mkdir(parents=True, exist_ok=True)
        if self.v2:
            path = f"/system.slice/docker-{named}.scope"
            (self.proc / str(pid) / "cgroup").write_text(f"0::{path}\n")
        else:
            path = f"/libpod_parent/libpod-{named}"
            (self.proc / str(pid) / "cgroup").write_text(
                f"9:name=systemd:{path}\n4:memory:{path}\n2:cpu,cpuacct:{path}\n0::{path}\n")
        self.set(named, used_ns, mem, inactive)

    def files(self, cid: str) -> dict[str, Path]:
        if self.v2:
            folder = self.root / "system.slice" / f"docker-{cid}.scope"
            return {"cpu": folder / "cpu.stat", "mem": folder / "memory.current", "stat": folder / "memory.stat"}
        cpu, mem = self.root / "cpu,cpuacct" / "libpod_parent" / f"libpod-{cid}", \
            self.root / "memory" / "libpod_parent" / f"libpod-{cid}"
        return {"cpu": cpu / "cpuacct.usage", "mem": mem / "memory.usage_in_bytes", "stat": mem / "memory.stat"}

    def set(self, cid: str, used_ns: int, mem: int, inactive: int = 0) -> None:
        """Written in place, as the kernel updates them: the agent's open files see the new figures."""
        files = self.files(cid)
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        if self.v2:
            files["cpu"].write_text(f"usage_usec {used_ns // 1000}\nuser_usec 1\nsystem_usec 1\n")
            files["stat"].write_text(f"anon 1\nfile 2\nactive_file 3\ninactive_file {inactive}\nslab 4\n")
        else:
            files["cpu"].write_text(f"{used_ns}\n")
            # v1 has both: the cgroup's own and its subtree's (what docker stats subtracts)
            files["stat"].write_text(f"cache 9\ninactive_file 1\ntotal_cache 9\ntotal_inactive_file {inactive}\n")
        files["mem"].write_text(f"{mem}\n")

    def reader(self, **kwargs: Any) -> Any:
        return agent.CgroupReader(str(self.proc), str(self.root), clock=self.clock, cpus=4, **kwargs)


def engine_with(names: list[str], first_pid: int = 1000) -> tuple[FakeEngine, list[dict[str, Any]]]:
    engine = FakeEngine()
    engine.containers = [listed(name) for name in names]
    for i, c in enumerate(engine.containers):
        engine.inspect[c["Id"]] = inspected(pid=first_pid + i)
        engine.stats[c["Id"]] = stats(0, 0, usage=7 << 20)
    return engine, engine.containers


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup-v2", "cgroup-v1"])
def test_every_running_container_is_measured_every_poll_from_its_cgroup(tmp_path, v2):
    host = FakeCgroups(tmp_path, v2=v2)
    engine, listing = engine_with([f"c{i:02d}" for i in range(50)])
    for i, c in enumerate(listing):
        host.add(c["Id"], 1000 + i, used_ns=0, mem=(100 + i) << 20, inactive=(10 + i) << 20)
    watcher = agent.ContainerWatcher(engine, cgroups=host.reader())
    try:
        first = watcher.poll()
        # Memory at once, as docker stats shows it (less the inactive page cache); no stats request at all.
        assert first.series["c07"] == {"down": 0, "mem": 90 << 20}
        assert [c for c in engine.calls if "/stats" in c] == []
        # 10 s later: c07 used 5 s of CPU, on 4 cores: 12.5 % of the host. Every container has a CPU figure.
        host.now_ns += 10 * 10**9
        host.set(listing[7]["Id"], 5 * 10**9, 300 << 20, inactive=(17 << 20))
        engine.calls.clear()
        second = watcher.poll(listing=False)
        assert second.series["c07"] == {"down": 0, "cpu": 12.5, "mem": (300 - 17) << 20}
        assert all(second.series[f"c{i:02d}"]["cpu"] == 0.0 for i in range(50) if i != 7)
        assert engine.calls == []
    finally:
        watcher.close()


def test_a_cgroup_that_is_not_the_containers_is_never_read(tmp_path):
    """The pid an engine reports, seen from another pid namespace, is some other process: its cgroup is not the
    container's, and neither are its figures. Garbage, a vanished cgroup, and the bound on open files: the engine's
    stats instead, and nothing raises."""
    host = FakeCgroups(tmp_path)
    engine, (web, db, job, spare) = engine_with(["web", "db", "job", "spare"])
    host.add(web["Id"], 1000, 0, 100 << 20)
    host.add(db["Id"], 1001, 0, 100 << 20, cgroup_id="f" * 64)  # pid 1001 is someone else's here
    host.add(job["Id"], 1002, 0, 100 << 20)
    host.add(spare["Id"], 1003, 0, 100 << 20)
    host.files(job["Id"])["cpu"].write_text("usage_usec lots\n")
    watcher = agent.ContainerWatcher(engine, cgroups=host.reader(fds_max=6))  # 2 containers' files at most
    try:
        # An engine that names a container by a short id: it could match part of any path, so it is never read.
        assert host.reader().read(web["Id"][:12], 1000) is None
        report = watcher.poll()
        asked = {c.split("/")[2] for c in engine.calls if "/stats" in c}
        assert asked == {db["Id"], job["Id"]}  # web and spare from their cgroups: the 2 the bound allows
        assert report.series["db"]["mem"] == report.series["job"]["mem"] == 7 << 20  # the engine's figure
        assert report.series["web"]["mem"] == report.series["spare"]["mem"] == 100 << 20
        # web stops: its cgroup goes (emptied here; ENODEV on a real one). The engine answers for it, and its
        # files are closed, so another container's can be kept.
        for path in host.files(web["Id"]).values():
            path.write_text("")
        engine.calls.clear()
        watcher.poll(listing=False)
        assert web["Id"] in {c.split("/")[2] for c in engine.calls if "/stats" in c}
    finally:
        watcher.close()


def test_a_restarted_container_is_read_from_its_new_process(tmp_path):
    host = FakeCgroups(tmp_path, v2=False)
    engine, (web,) = engine_with(["web"])
    host.add(web["Id"], 1000, 0, 100 << 20)
    watcher = agent.ContainerWatcher(engine, cgroups=host.reader())
    try:
        assert watcher.poll().series["web"]["mem"] == 100 << 20
        # Restarted: a new main process (the event names it, so it is inspected again) and a fresh cgroup.
        engine.inspect[web["Id"]] = inspected(restarts=1, pid=2000)
        host.add(web["Id"], 2000, 0, 30 << 20)
        report = watcher.poll(touched={web["Id"]})
        assert report.series["web"] == {"down": 0, "mem": 30 << 20}  # no CPU across two processes' counters
        assert [c for c in engine.calls if "/stats" in c] == []
    finally:
        watcher.close()


def test_event_lines_read_container_ids_from_a_stream_in_any_pieces():
    head = b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\r\n"
    die = {"status": "die", "id": "a" * 64, "Type": "container", "Action": "die",
           "Actor": {"ID": "a" * 64, "Attributes": {"name": "web"}}}
    health = {"Type": "container", "Action": "health_status: unhealthy", "Actor": {"ID": "b" * 64}}  # no `id`
    stream = (head + json.dumps(die).encode() + b"\n" + b"not json\n" + json.dumps({"Type": "image"}).encode()
              + b"\n" + json.dumps(health).encode() + b"\n")
    for size in (1, 7, len(stream)):
        lines = agent.EventLines()
        ids = [cid for i in range(0, len(stream), size) for cid in lines.feed(stream[i:i + size])]
        assert lines.opened and ids == ["a" * 64, "b" * 64]


def test_event_lines_bound_what_a_hostile_stream_can_make_the_agent_hold():
    with pytest.raises(agent.EngineError, match="404"):
        agent.EventLines().feed(b"HTTP/1.0 404 Not Found\r\n\r\n")
    with pytest.raises(agent.EngineError, match="head"):
        agent.EventLines().feed(b"HTTP/1.0 200 OK\r\n" + b"X: y\r\n" * 3000)
    with pytest.raises(agent.EngineError, match="chunked"):
        agent.EventLines().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    lines = agent.EventLines()
    lines.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    with pytest.raises(agent.EngineError, match="over"):  # never a newline: not held for ever
        for _ in range(100):
            lines.feed(b"x" * 4096)
    lines = agent.EventLines()
    lines.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    assert lines.feed(b'{"id": "' + b"c" * 500 + b'"}\n{"id": 5}\n[1]\n') == []  # ids that are not ids


async def test_event_news_are_bounded_and_taken_once():
    events = agent.ContainerEvents()
    events.add([f"{i:064x}" for i in range(10 * agent.CONTAINER_EVENT_IDS)])  # a storm of events
    assert events.news
    with trio.fail_after(1):
        await events.wait()  # woken
    ids = events.take()
    assert len(ids) == agent.CONTAINER_EVENT_IDS and not events.news
    assert events.take() == set()
    with trio.move_on_after(0.01) as waiting:  # nothing new: the poll loop sleeps until its next period
        await events.wait()
    assert waiting.cancelled_caught


def test_a_containers_snapshot_is_cut_to_the_servers_bounds():
    config = agent.AgentConfig(secret="s", server="127.0.0.1")
    a = agent.Agent(config, collector=object())  # type: ignore[arg-type]
    items = [{"name": f"c{i}", "image": "x" * 250, "state": "running", "health": "", "restarts": 0}
             for i in range(900)]
    assert a._put_snapshot("containers", 1, agent.fit_snapshot(items), time.time())  # the container loop's way
    frame = a._snapshots["containers"][1]
    parsed = protocol.parse_agent_frame(frame, cores=4)
    assert 0 < len(parsed.items) <= 500 and len(parsed.items_json.encode()) <= 256 * 1024


# --- the unix-socket HTTP client against a real socket ---------------------------------------------------------


@pytest.fixture
def engine_socket(tmp_path):
    """A real AF_UNIX listener; each test says what it answers (raw bytes, or a function of the socket)."""
    path = str(tmp_path / "engine.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    behaviour: dict[str, Any] = {}

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                answer = behaviour["answer"]
                try:
                    answer(conn) if callable(answer) else conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, behaviour
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
    server.close()
    thread.join(5)


def http(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_engine_get_reads_json_and_bounds_everything(engine_socket):
    path, behaviour = engine_socket
    behaviour["answer"] = http(json.dumps([listed("web")]).encode())
    assert agent.engine_get(path, "/containers/json?all=1", 1 << 20)[0]["Names"] == ["/web"]
    behaviour["answer"] = http(b"x" * 5000)
    with pytest.raises(agent.EngineError, match="over 1000 bytes"):
        agent.engine_get(path, "/containers/json", 1000)
    behaviour["answer"] = http(b'{"message": "page not found"}', "404 Not Found")
    with pytest.raises(agent.EngineError, match="HTTP 404"):
        agent.engine_get(path, "/nope", 1000)
    behaviour["answer"] = http(b"<html>")
    with pytest.raises(agent.EngineError, match="not JSON"):
        agent.engine_get(path, "/containers/json", 1000)
    behaviour["answer"] = b"SSH-2.0-OpenSSH_9.2\r\n"
    with pytest.raises(agent.EngineError, match="not an HTTP answer"):
        agent.engine_get(path, "/containers/json", 1000)
    # An engine that answers in chunks all the same.
    behaviour["answer"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n")
    assert agent.engine_get(path, "/containers/json", 1000) == [1, 2]

    def trickle(conn: socket.socket) -> None:  # a byte every 0.1 s, for ever: the whole answer has a deadline
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100):
            conn.sendall(b" ")
            time.sleep(0.1)

    behaviour["answer"] = trickle
    started = time.monotonic()
    with pytest.raises(agent.EngineError):
        agent.engine_get(path, "/containers/json", 1 << 20, timeout=0.5)
    assert time.monotonic() - started < 2
    with pytest.raises(agent.EngineError):
        agent.engine_get(str(Path(path).with_name("missing.sock")), "/containers/json", 1000)


def test_follow_events_over_a_real_socket(engine_socket):
    path, behaviour = engine_socket
    requests: list[bytes] = []

    def stream(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        for cid in ("a" * 64, "b" * 64):
            conn.sendall(json.dumps({"Type": "container", "Action": "start", "id": cid}).encode() + b"\n")
        # then the engine ends the stream (a restart of the engine)

    behaviour["answer"] = stream
    opened: list[socket.socket] = []
    delivered: list[str] = []
    agent.follow_events(path, opened.append, delivered.extend)
    assert len(opened) == 1 and delivered == ["a" * 64, "b" * 64]
    behaviour["answer"] = http(b'{"message": "page not found"}', "404 Not Found")  # an engine without events
    with pytest.raises(agent.EngineError, match="404"):
        agent.follow_events(path, opened.append, delivered.extend)
    with pytest.raises(agent.EngineError):
        agent.follow_events(path + ".missing", opened.append, delivered.extend)
    assert len(opened) == 1


def test_socket_discovery_says_how_to_grant_access(tmp_path):
    assert agent.find_container_socket("off", {})[0] is None
    missing = agent.find_container_socket(str(tmp_path / "none.sock"), {})
    assert missing[0] is None and "does not exist" in missing[1]
    sock = tmp_path / "podman.sock"
    sock.touch()
    assert agent.find_container_socket(f"unix://{sock}", {})[0] == str(sock)
    runtime = tmp_path / "run"
    (runtime / "podman").mkdir(parents=True)
    (runtime / "podman" / "podman.sock").touch()
    found = agent.find_container_socket(None, {"XDG_RUNTIME_DIR": str(runtime)})
    if not os.path.exists("/var/run/docker.sock"):
        assert found[0] == str(runtime / "podman" / "podman.sock")
    if os.geteuid() != 0:  # root may open anything: the refusal is for ordinary users
        sock.chmod(0)
        denied = agent.find_container_socket(str(sock), {})
        assert denied[0] is None and "docker group" in denied[1]
    assert agent.config_from_env({"AGENT_SECRET": "s", "AGENT_SERVER_IP": "h", "AGENT_CONTAINER_SOCKET": "off"},
                                 {}).container_socket == "off"


# --- the server's edge -----------------------------------------------------------------------------------------


def snapshot_frame(items: list[Any]) -> str:
    return json.dumps({"type": "snapshot", "kind": "containers", "v": 1, "ts": 1764019410.0, "items": items})


def test_containers_snapshot_is_validated_and_cleaned():
    parsed = protocol.parse_agent_frame(snapshot_frame([
        {"name": "<b>web</b>\x1b[31m", "image": "nginx", "state": "running", "health": "", "restarts": 2,
         "cpu": 1.5, "mem": 1e6, "extra": "ignored"},
        {"name": "job", "state": "exited"}]), cores=4)
    assert parsed.items[0] == {"name": "<b>web</b>\ufffd[31m", "image": "nginx", "state": "running", "health": "",
                               "restarts": 2, "cpu": 1.5, "mem": 1e6}
    assert parsed.items[1] == {"name": "job", "image": "", "state": "exited", "health": "", "restarts": 0}
    for bad, problem in (({"state": "running"}, "must be a string"), ({"name": ""}, "must not be empty"),
                         ({"name": "a", "restarts": -1}, "restarts"), ({"name": "a", "cpu": 300}, "cpu"),
                         ({"name": "a", "restarts": True}, "restarts")):
        with pytest.raises(ProtocolError, match=problem):
            protocol.parse_agent_frame(snapshot_frame([bad]), cores=4)
    with pytest.raises(ProtocolError, match="same name"):
        protocol.parse_agent_frame(snapshot_frame([{"name": "a"}, {"name": "a"}]), cores=4)


def test_container_series_at_the_edge():
    metrics = protocol.validate_metrics({"containers": {"web": {"cpu": 3.0, "mem": 5e7, "down": 0},
                                                        "db": {"down": 3}}})
    assert protocol.flatten(metrics) == {"container_cpu:web": 3.0, "container_mem:web": 5e7,
                                         "container_down:web": 0.0, "container_down:db": 3.0}
    for bad in ({"web": {"down": 1.5}}, {"web": {"down": 7}}, {"web": {"cpu": 101}}, {"web": []},
                {f"c{i}": {} for i in range(300)}):
        with pytest.raises(ProtocolError):
            protocol.validate_metrics({"containers": bad})


def test_plot_container_words():
    flat = protocol.flatten(protocol.validate_metrics(
        {"cpu": 5, "containers": {"web": {"cpu": 3.0, "mem": 5e7, "down": 0}, "db": {"down": 1}}}))
    request = plotspec.parse_plot(["box1", "container:web", "cpu", "24h"])
    assert request.metrics == ("container:web cpu",) and request.span == 86400
    assert [c.series for c in plotspec.resolve_metrics(request.metrics, flat)] == ["container_cpu:web"]
    both = plotspec.resolve_metrics(["container:web"], flat)
    assert [(c.series, c.unit) for c in both] == [("container_cpu:web", "%"), ("container_mem:web", "MiB")]
    request = plotspec.parse_plot(["box1", "cpu;container:web", "MEM", "1h", "gib"])
    assert request.metrics == ("cpu", "container:web mem") and request.unit == "gib"
    assert plotspec.resolve_metrics(["container:db down"], flat)[0].series == "container_down:db"
    with pytest.raises(plotspec.PlotUsageError) as info:
        plotspec.resolve_metrics(["container:nope"], flat)
    assert "container:db" in info.value.message and "container:web" in info.value.message
    with pytest.raises(plotspec.PlotUsageError, match="'bogus' is not a SPAN"):
        plotspec.parse_plot(["box1", "container:web", "bogus", "1h"])


# --- alerts ----------------------------------------------------------------------------------------------------


def test_setalert_grammar_for_containers():
    spec = alert_commands.parse_setalert(["box1", "container:Web", "down"])
    assert (spec.metric, spec.for_s) == ("container:Web", 0.0)
    assert alert_commands.parse_setalert(["box1", "containers", "DOWN", "2m"]).for_s == 120
    for args, problem in ((["box1", "containers", "90"], "takes the word down"),
                          (["box1", "container:web"], "takes the word down"),
                          (["box1", "container:web", "down", "1m", "x"], "too many"),
                          (["box1", "container:", "down"], "unknown metric")):
        with pytest.raises(alert_commands.AlertUsageError, match=problem):
            alert_commands.parse_setalert(args)
    assert views.rule_text(spec.rule(1)) == "container:Web down"
    assert alert_commands.parse_delalert(["box1", "container:Web"]).metric == "container:Web"


def sample(**down: float) -> dict[str, float]:
    return {"cpu": 1.0, **{f"container_down:{name}": value for name, value in down.items()}}


def test_a_stopped_container_fires_and_resolves():
    rule = alert_commands.parse_setalert(["box1", "container:web", "down"]).rule(1)
    engine = AlertEngine([rule], now=0.0)
    assert engine.observe(1, 10.0, sample(web=0, db=0), 10.0) == []
    fired = engine.observe(1, 15.0, sample(web=1, db=0), 15.0)
    assert len(fired) == 1 and alert_text.describe(fired[0], "box1") == "box1: container web is down: not running"
    assert engine.observe(1, 20.0, sample(web=0), 20.0) == []  # hysteresis: two samples back
    resolved = engine.observe(1, 25.0, sample(web=0), 25.0)
    # Down from the first sample that said so to the first that did not: 5 s.
    assert alert_text.describe(resolved[0], "box1") == "box1: container web is up again after 5 s"


def test_a_watched_container_that_disappears_is_down():
    engine = AlertEngine([alerts.AlertRule(1, "container:web", alerts.DOWN)], now=0.0)
    engine.observe(1, 10.0, sample(web=0), 10.0)
    fired = engine.observe(1, 15.0, sample(), 15.0)  # compose down: removed, not in the sample any more
    assert "container web is down: not reported (removed?)" in alert_text.describe(fired[0], "box1")


def test_containers_down_watches_every_container_and_groups_a_storm():
    engine = AlertEngine([alerts.AlertRule(1, "containers", alerts.DOWN, for_s=10.0)], now=0.0)
    names = [f"c{i}" for i in range(300)]
    engine.observe(1, 0.0, sample(**{n: 0 for n in names}), 0.0)
    assert engine.observe(1, 5.0, sample(**{n: 1 for n in names}), 5.0) == []  # FOR 10 s: pending
    fired = engine.observe(1, 15.0, sample(**{n: 1 for n in names}), 15.0)
    assert len(fired) == 300
    messages = alert_text.grouped(fired)
    assert len(messages) == 1
    text = alert_text.describe_group(messages[0], "box1")
    assert text.startswith("box1: 300 containers down: c0 (not running), c1 (not running)")
    assert text.endswith("… and 280 more") and len(text) < 1000
    # Two alone stay two messages of their own; other events keep their place.
    assert [len(g) for g in alert_text.grouped(fired[:2])] == [1, 1]


def test_alert_text_of_a_hostile_container_name_is_escaped_on_the_way_out():
    engine = AlertEngine([alerts.AlertRule(1, "containers", alerts.DOWN)], now=0.0)
    engine.observe(1, 0.0, {"container_down:<a href='x'>": 0.0}, 0.0)
    fired = engine.observe(1, 5.0, {"container_down:<a href='x'>": 2.0}, 5.0)
    text = alert_text.describe(fired[0], "box1")
    assert text == "box1: container <a href='x'> is down: unhealthy"  # plain: alerting escapes it for HTML


# --- the chat and the CLI --------------------------------------------------------------------------------------


def host(metrics: dict[str, Any] | None = None) -> Host:
    return Host(7, "box1", 42, "k" * 16, 0.0, {}, 1, 1, time.time(), 0.0, metrics or {}, 1)


def test_containers_view_lists_trouble_first_escaped_and_bounded():
    items = [{"name": "web", "image": "nginx:1.25", "state": "running", "health": "healthy", "restarts": 0,
              "cpu": 0.3, "mem": 45 * 2**20},
             {"name": "<i>db</i>", "image": "postgres:16", "state": "exited", "health": "", "restarts": 3},
             {"name": "api", "image": "api", "state": "running", "health": "unhealthy", "restarts": 0}]
    text, keyboard = views.containers_view(host(), items, time.time() - 12, time.time())
    lines = text.splitlines()
    assert lines[0] == "<b>box1</b> · containers · 12 s ago"
    assert lines[1] == "3 containers: 1 running, 1 exited, 1 unhealthy"
    assert lines[2] == "🔴 <b>&lt;i&gt;db&lt;/i&gt;</b> exited · postgres:16 · 3 restarts"  # "<" sorts first
    assert lines[3] == "🟠 <b>api</b> unhealthy · api"
    assert lines[4] == "🟢 <b>web</b> · nginx:1.25 · CPU 0.3 % · 45.0 MiB"
    assert [b["callback_data"] for b in keyboard["inline_keyboard"][0]] == ["containers:7:r", "card:7"]
    many = [{"name": f"container-{i:03d}", "image": "registry.example.com/team/app:" + "v" * 60,
             "state": "running", "health": "", "restarts": 0} for i in range(500)]
    text, _ = views.containers_view(host(), many, time.time(), time.time())
    assert len(text) <= 4096 and "more (python -m mbot containers box1 lists all)" in text
    text, _ = views.containers_view(host(), None, None, time.time())
    assert "No containers reported" in text


def test_card_has_a_containers_button_only_with_containers():
    with_containers = host({"cpu": 1.0, "containers": {"web": {"down": 0}, "db": {"down": 1}}})
    card = views.host_card(with_containers, time.time())
    assert "Containers 1 up, 1 down" in card
    first_row = views.card_keyboard(with_containers)["inline_keyboard"][0]
    assert first_row[-1] == {"text": "🐳 Containers", "callback_data": "containers:7"}
    assert all("containers" not in b["callback_data"]
               for row in views.card_keyboard(host({"cpu": 1.0}))["inline_keyboard"] for b in row)
    assert views.decode_callback("containers:7") == views.Callback("containers", ("7",))
    assert views.decode_callback("containers:7:r") == views.Callback("containers", ("7", "r"))
    assert views.decode_callback("containers:7:x") is None and views.decode_callback("containers:x") is None


def test_rows_survive_a_damaged_stored_snapshot():
    listed_rows = containers.rows([{"name": "a", "restarts": "many", "cpu": "hot"}, {}])
    assert [(c.name, c.restarts, c.cpu) for c in listed_rows] == [("", 0, None), ("a", 0, None)]
    assert containers.tally([]) == "no containers"


def test_cli_lists_a_hosts_containers(tmp_path, monkeypatch, capsys):
    from helpers import add_host, make_settings
    from mbot import cli, store

    def mbot(*args: str) -> str:  # in this process: the command is a read of the database, like `hosts`
        assert cli.main(list(args)) == 0
        return capsys.readouterr().out

    monkeypatch.setenv("MBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MBOT_PUBLIC_HOST", "127.0.0.1")

    settings = make_settings(tmp_path)
    key = add_host(settings, "box1")
    parsed = protocol.parse_agent_frame(snapshot_frame([
        {"name": "web", "image": "nginx", "state": "running", "health": "healthy", "restarts": 0, "cpu": 1.25,
         "mem": 3 * 2**20},
        {"name": "job\u202e", "image": "busybox", "state": "exited", "restarts": 4}]), cores=4)
    conn = store.connect(settings.db_path)
    try:
        with conn:
            host_id = store.hosts_named(conn, key.name)[0].id
            store.put_snapshot(conn, host_id, "containers", 1, parsed.ts, time.time() - 7200, parsed.items_json)
    finally:
        conn.close()
    lines = mbot("containers", "box1").splitlines()
    assert lines[0] == "box1: 2 containers: 1 running, 1 exited, 2 h ago"
    # A bidi override in a name was cleaned at the edge, like every label.
    assert lines[1].split() == ["job\ufffd", "exited", "busybox", "4", "restarts"]
    assert lines[2].split() == ["web", "running", "(healthy)", "nginx", "cpu", "1.2%", "mem", "3", "MiB"]
    listed = json.loads(mbot("containers", "box1", "--json"))
    assert listed["host"] == "box1" and [c["name"] for c in listed["containers"]] == ["job\ufffd", "web"]
    assert listed["containers"][1] == {"name": "web", "image": "nginx", "state": "running", "health": "healthy",
                                       "restarts": 0, "cpu": 1.25, "mem": 3 * 2**20}


class EngineStandIn:
    """The Engine API on a real unix socket: GETs answered from `answers` (path -> function), GET /events followed
    with the events `push`ed (or 404 with events=False: an engine without a stream). `requests` in order."""

    def __init__(self, path: str, answers: dict[str, Any], *, events: bool = True) -> None:
        self.path, self.answers, self.events = path, answers, events
        self.requests: list[str] = []
        self.following = trio.Event()
        self._streams: list[trio.socket.SocketType] = []

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(self.path)
        listener.listen(16)
        task_status.started()
        with listener:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._answer, conn)

    async def _answer(self, conn: trio.socket.SocketType) -> None:
        with conn:
            target = (await conn.recv(65536)).split()[1].decode()
            self.requests.append(target)
            if target.startswith("/events?"):
                if not self.events:
                    await conn.send(b"HTTP/1.0 404 Not Found\r\n\r\n{}")
                    return
                await conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
                self._streams.append(conn)
                self.following.set()
                await trio.sleep_forever()
            body = json.dumps(self.answers[target]()).encode()
            await conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)

    async def push(self, action: str, cid: str) -> None:
        event = {"status": action, "id": cid, "Type": "container", "Action": action, "Actor": {"ID": cid}}
        for conn in self._streams:
            await conn.send(json.dumps(event).encode() + b"\n")

    def count(self, prefix: str, since: int = 0) -> int:
        return sum(r.startswith(prefix) for r in self.requests[since:])


def engine_answers(*containers: dict[str, Any], restarts: int = 0) -> dict[str, Any]:
    """Answers for these containers (GET /containers/json gives the list as it is when asked): each stats answer
    a second later, 1 ms of CPU in 4 ms of all cores."""
    readings = iter(range(1, 10**6))
    answers: dict[str, Any] = {"/containers/json?all=1": lambda: list(containers)}
    for c in containers:
        answers[f"/containers/{c['Id']}/stats?stream=false&one-shot=true"] = \
            lambda: stats(*(10**6 * n for n in (lambda n: (n, 4 * n))(next(readings))))
        answers[f"/containers/{c['Id']}/json"] = lambda: inspected(restarts)
    return answers


async def stored_containers(server, settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The next commit's containers snapshot and the latest sample's containers series."""
    from helpers import read_db
    await server.writer.next_commit()
    metrics = json.loads(read_db(settings, "SELECT last_metrics FROM hosts")[0][0] or "{}")
    stored = read_db(settings, "SELECT items FROM snapshots WHERE kind = 'containers'")
    return (json.loads(stored[0][0]) if stored else []), metrics.get("containers", {})


@pytest.fixture
def snapshots_4_a_second(monkeypatch):
    """The agent and the server at one snapshot of a kind per 0.25 s, not per second: a poll's cpu takes two of
    them, and the tests below wait for several polls. Both sides move together, so the budget still holds."""
    from mbot import limits

    monkeypatch.setattr(agent, "SNAPSHOT_MIN_INTERVAL", 0.25)
    monkeypatch.setattr(limits, "SNAPSHOT_MIN_INTERVAL", 0.25)


async def test_real_agent_sends_containers_to_the_real_server(server, settings, tmp_path, snapshots_4_a_second):
    """The real agent against the real server over TLS, its engine a stand-in speaking the Engine API on a real unix
    socket (the real Podman service: test_containers_podman.py)."""
    from helpers import add_host
    from test_agent_e2e import agent_config, run_in

    web, job = listed("web", status="Up 1 hour (healthy)"), listed("job<1>", state="exited", status="Exited (1)")
    answers = engine_answers(web, job, restarts=2)
    answers[f"/containers/{job['Id']}/json"] = inspected
    engine = EngineStandIn(str(tmp_path / "docker.sock"), answers, events=False)
    key = add_host(settings, "box1")
    async with trio.open_nursery() as running:
        await running.start(engine.serve)
        await run_in(running, agent_config(server, key.secret, tmp_path, container_socket=engine.path,
                                           containers_every=0.2))
        with trio.fail_after(20):
            while True:
                stored, series = await stored_containers(server, settings)
                if stored and "cpu" in series.get("web", {}):
                    break
        running.cancel_scope.cancel()
    assert stored == [
        {"name": "job<1>", "image": "nginx:1.25", "state": "exited", "health": "", "restarts": 0},
        {"name": "web", "image": "nginx:1.25", "state": "running", "health": "healthy", "restarts": 2, "cpu": 25.0,
         "mem": 50 << 20}]
    assert series == {"job<1>": {"down": 1.0}, "web": {"down": 0.0, "cpu": 25.0, "mem": 50 << 20}}
    # Without an event stream (404 here), every poll reads the list.
    assert engine.count("/containers/json") >= 2 and engine.count("/events") >= 1


async def test_an_engine_event_has_the_agent_list_again_within_seconds(server, settings, tmp_path,
                                                                     snapshots_4_a_second):
    """With the event stream followed, the list is read on events (and rarely otherwise), stats every poll: a
    container that stops reaches the server at once, not at the next resync."""
    from helpers import add_host
    from test_agent_e2e import agent_config, run_in

    web = listed("web")
    containers = [web]
    answers = engine_answers(web)
    answers["/containers/json?all=1"] = lambda: list(containers)
    engine = EngineStandIn(str(tmp_path / "docker.sock"), answers)
    key = add_host(settings, "box1")
    async with trio.open_nursery() as running:
        await running.start(engine.serve)
        # Polls every 0.25 s (interval 0.1 s; one snapshot per 0.25 s is what the server takes here).
        await run_in(running, agent_config(server, key.secret, tmp_path, container_socket=engine.path,
                                           containers_every=0.25))
        with trio.fail_after(20):
            await engine.following.wait()
            while (await stored_containers(server, settings))[0] == []:
                pass
            # Quiet: polls read stats, not the list (one list at most: the one for the stream's start).
            since = len(engine.requests)
            while engine.count("/containers/" + web["Id"] + "/stats", since) < 2:
                await server.writer.next_commit()
            assert engine.count("/containers/json", since) <= 1
            containers[0] = listed("web", state="exited", status="Exited (137)", cid=web["Id"])
            await engine.push("die", web["Id"])
            stored, series = await stored_containers(server, settings)
            while series.get("web", {}).get("down") != 1.0 or stored[0]["state"] != "exited":
                stored, series = await stored_containers(server, settings)
        running.cancel_scope.cancel()
    assert "cpu" not in series["web"] and "cpu" not in stored[0]


async def test_hundreds_of_flapping_containers_cost_a_few_messages_a_minute(settings, nursery):
    """The attacker's (or the unlucky deploy's) side: 200 containers down and up every 20 s for 10 minutes."""
    import trio
    import trio.testing

    from helpers import add_host
    from mbot.alerting import STATE_BURST, STATE_EVERY, Alerting
    from mbot.store import Database
    from mbot.writer import Writer

    key = add_host(settings, "box1", owner=42)
    db, writer = Database(settings.db_path), Writer(settings.db_path)
    nursery.start_soon(writer.run)
    now = [time.time()]
    alerting = Alerting(db, writer, clock=lambda: now[0])
    sent: list[tuple[float, str]] = []
    alerting.set_notify(lambda owner, text, event, *group: sent.append((now[0], text)))
    await nursery.start(alerting.run)
    await alerting.set_rule(alerts.AlertRule(key.host_id, "containers", alerts.DOWN))
    names = [f"c{i:03d}" for i in range(200)]

    async def settle() -> None:
        # Until alerting has done all it will do at this time: its deliveries read the store in worker threads, and
        # tasks waiting for a thread count as blocked, so both are waited for (or a message would go out later,
        # at a time the fake clock has moved past).
        while True:
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            if not trio.testing.active_thread_count():
                return
            await trio.testing.wait_all_threads_completed()

    async def sample(seq: int, down: int) -> None:
        now[0] += 5
        series = {f"container_down:{n}": float(down) for n in names}
        alerting.on_samples(key.host_id, [protocol.Sample(seq, now[0], {}, series)])
        alerting.clock_moved()
        await settle()

    await sample(1, 0)
    await sample(2, 1)
    with trio.fail_after(10):  # the first goes at once: nobody waits a minute to hear of the first trouble
        while not sent:
            await settle()
    assert sent[0][1].startswith("box1: 200 containers down: c000 (not running), c001 (not running)")
    for seq in range(3, 123):  # 10 minutes
        await sample(seq, (seq // 2) % 2)
    now[0] += STATE_EVERY + 1
    with trio.fail_after(10):
        while alerting._held or alerting._outgoing:
            alerting.clock_moved()
            await settle()
    # After a burst, one message per kind of news (down, up again) per minute at most: 30 flaps would have been 60
    # messages.
    times = sorted({at for at, _ in sent})
    assert len(sent) <= 2 * len(times) and len(times) <= STATE_BURST + 600 / STATE_EVERY + 1
    assert all(b - a >= STATE_EVERY - 0.001 for a, b in zip(times[STATE_BURST:], times[STATE_BURST + 1:]))
    assert all(len(text) < 1200 and text.startswith("box1: 200 containers ") for _, text in sent)
    assert any("times in all)" in text for _, text in sent)  # flapped within the minute: said once, counted
    writer.close()


async def test_container_alerts_in_the_chat_one_alone_then_a_storm_together(fake, nursery, settings):
    """Through the real server and the fake Bot API: a container alone is an alert thread with a Containers button
    (no chart); several at once are one message; their end together is one message, and the lone alert's own
    message is edited to say it ended."""
    import re

    from helpers import BASE_TS
    from test_alert_delivery import start, to_alice
    from test_bot import ALICE, Agent, WallClock, buttons, say

    server = await start(nursery, settings, fake, WallClock())
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    assert "containers down" in (await say(fake, ALICE, "/setalert box1 containers down"))["text"]
    agent = await Agent.connect(nursery, server.port, secret)

    async def send(seq: int, **down: int) -> None:
        metrics = {"cpu": 1.0, "containers": {name: {"down": code} for name, code in down.items()}}
        await agent.ws.send_message(json.dumps({"type": "sample", "seq": seq, "ts": BASE_TS + seq,
                                                "metrics": metrics}))

    await send(1, web=0, a=0, b=0, c=0)
    await send(2, web=1, a=0, b=0, c=0)
    alone = await fake.wait_for(to_alice("sendMessage", "box1: container web is down: not running"), timeout=10)
    assert list(buttons(alone.params)) == ["🐳 Containers", "🔕 Mute 1h", "✔️ Ack"]
    assert not fake.calls("sendPhoto")
    await send(3, web=1, a=2, b=1, c=3)
    storm = await fake.wait_for(to_alice("sendMessage", "box1: 3 containers down: "), timeout=10)
    assert "a (unhealthy), b (not running), c (restarting over and over)" in storm.params["text"]
    assert list(buttons(storm.params)) == ["🐳 Containers"]
    since = len(fake.sent)
    await send(4, web=0, a=0, b=0, c=0)
    await send(5, web=0, a=0, b=0, c=0)
    back = await fake.wait_for(to_alice("sendMessage", "box1: 4 containers up again: "), since=since, timeout=10)
    edited = await fake.wait_for(lambda c: c.method == "editMessageText"
                                 and c.params["message_id"] == alone.result["message_id"], since=since, timeout=10)
    assert edited.params["text"].startswith("✅ box1: container web is up again after 2 s; worst not running")
    assert back.params["text"].count("web") == 1
    # No message per container: the edit is quiet, the group's message is the one that notifies.
    assert len([c for c in fake.sent[since:] if c.method == "sendMessage"]) == 1
    await agent.close()
    await server.aclose()
