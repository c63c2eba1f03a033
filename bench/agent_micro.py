"""What one agent step costs: CPU time of Collector.collect() per call, and the spool's append + ack per sample.

    .venv/bin/python bench/agent_micro.py             # 200 collects, 20,000 spool samples
    .venv/bin/python bench/agent_micro.py --collects 50 --samples 3000

Budgets (exit status 1 when one is exceeded): collect() under 5 ms of CPU per call, spool append + ack under 2 ms
per sample; both small enough to ignore at any interval. These were unit-test assertions once; a shared or slow CI
machine made them fail with nothing wrong, so they are measured here, where the machine is known. The whole agent
process (RSS, CPU per committed sample against a real server) is bench/agent_cost.py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
COLLECT_BUDGET = 0.005  # seconds of CPU per collect()
SPOOL_BUDGET = 0.002  # seconds per sample, append + ack


def load_agent() -> ModuleType:
    """The agent is one file, not a package: load it by path (registered in sys.modules, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location("mbot_agent", ROOT / "agent" / "mbot_agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mbot_agent"] = module
    spec.loader.exec_module(module)
    return module


def collect_cpu(agent: ModuleType, calls: int) -> float:
    collector = agent.Collector(gpu=False)
    collector.collect()  # the first call primes the rate counters
    start = time.process_time()
    for _ in range(calls):
        collector.collect()
    return (time.process_time() - start) / calls


def spool_per_sample(agent: ModuleType, samples: int) -> float:
    text = agent.encode_sample(1, time.time(), {"cpu": 12.5, "cpu_cores": [10.0] * 16, "load": [0.5, 0.4, 0.3],
                                                "ram": {"used": 4 << 30, "total": 16 << 30}, "uptime": 1000.0})
    with tempfile.TemporaryDirectory(prefix="mbot-bench-spool-") as tmp, \
            contextlib.closing(agent.open_spool(str(Path(tmp) / "spool.sqlite3"), samples)) as spool:
        start = time.perf_counter()
        for seq in range(1, samples + 1):
            spool.append(seq, text, time.time())
            spool.ack(seq)
        return (time.perf_counter() - start) / samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collects", type=int, default=200)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    agent = load_agent()
    collect = collect_cpu(agent, args.collects)
    spool = spool_per_sample(agent, args.samples)
    over = False
    for what, value, budget in (("collect() CPU per call", collect, COLLECT_BUDGET),
                                ("spool append+ack per sample", spool, SPOOL_BUDGET)):
        verdict = "ok" if value < budget else "OVER BUDGET"
        over |= value >= budget
        print(f"{what}: {value * 1e3:.3f} ms (budget {budget * 1e3:g} ms) {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
