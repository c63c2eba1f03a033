"""Runs agent/mbot_agent.py (or $AGENT_FILE) with its CPU counted per function and per trio task, for
`bench/agent_cost.py --breakdown`, which prints where a sample's CPU goes.

Each wrapped function adds the thread CPU time (time.thread_time) of its calls, so nested ones are inclusive: a
collector's figure contains what it calls. A trio Instrument adds each task step's CPU to its task's name. On SIGUSR1
the totals so far are written as JSON to $BREAKDOWN_OUT/<n>.json, where n counts the signals: the bench takes one
at the start of its window and one at the end and prints the difference per sample. The wrappers cost about a
microsecond a call, a few percent of the agent's CPU."""
from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from typing import Any

AGENT = os.environ.get("AGENT_FILE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent",
                                                     "mbot_agent.py")
# (owner, attribute) pairs: the collectors, the container poll, encoding and spooling (those missing from an older
# agent are skipped)
WRAPPED = [("", "engine_get"), ("", "encode_sample"), ("Agent", "_collect_and_store"), ("Agent", "_poll_and_put"),
           ("Agent", "_store_sample"), ("Agent", "_put_snapshot"), ("Collector", "collect"),
           ("Collector", "snapshots"), ("ProcessTable", "top"), ("ContainerWatcher", "poll"),
           ("CgroupReader", "read"), ("Collector", "_cpu_percent"), ("Collector", "_meminfo"),
           ("Collector", "disks"), ("Collector", "_disk_counters"), ("Collector", "_net_counters"),
           ("Collector", "_gpu_metrics"), ("", "compact_temps"), ("psutil", "disk_usage"),
           ("psutil", "sensors_temperatures")]


def load_agent() -> Any:
    spec = importlib.util.spec_from_file_location("mbot_agent", AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mbot_agent"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    agent = load_agent()
    import trio

    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])  # name -> [calls, CPU seconds]
    lock = threading.Lock()

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with lock:
                    entry = totals[label]
                    entry[0] += 1
                    entry[1] += spent
        setattr(owner, name, counted)

    for owner_name, name in WRAPPED:
        owner = getattr(agent, owner_name) if owner_name else agent
        if owner is not None and hasattr(owner, name):
            wrap(owner, name, f"{owner_name}.{name}" if owner_name else name)

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: Any) -> None:
            self.started = time.thread_time()

        def after_task_step(self, task: Any) -> None:
            entry = totals["task " + task.name.rsplit(".", 1)[-1]]
            entry[0] += 1
            entry[1] += time.thread_time() - self.started

    out = os.environ["BREAKDOWN_OUT"]
    dumps = iter(range(1, 1 << 30))
    loop_thread = threading.get_native_id()

    def dump(signum: int, frame: Any) -> None:
        with lock:
            figures: dict[str, Any] = {name: list(entry) for name, entry in totals.items()}
        with open(f"/proc/self/task/{loop_thread}/schedstat") as f:
            figures["event loop thread"] = [0, int(f.read().split()[0]) / 1e9]
        with open(os.path.join(out, f"{next(dumps)}.json"), "w") as f:
            json.dump(figures, f)

    signal.signal(signal.SIGUSR1, dump)
    run = trio.run
    agent.trio.run = lambda *a, **k: run(*a, **{**k, "instruments": [*k.get("instruments", ()), Steps()]})
    return agent.main()


if __name__ == "__main__":
    sys.exit(main())
