"""The server's processes collect garbage at their own pace (mbot/gcpace.py): young collections far rarer than
CPython's default, and cycles still freed without anyone calling gc.collect(). In a fresh interpreter, so that the
test process keeps its own pace."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json
from mbot import gcpace

class Node:
    alive = 0
    def __init__(self):
        Node.alive += 1
    def __del__(self):
        Node.alive -= 1

def churn(cycles):
    young_before = gc.get_stats()[0]["collections"]
    most = 0
    for _ in range(cycles):
        a, b = Node(), Node()
        a.other, b.other = b, a  # garbage only the collector frees
        most = max(most, Node.alive)
    return {"young": gc.get_stats()[0]["collections"] - young_before, "most": most}

default = churn(100_000)
gcpace.tune()
tuned = churn(20 * gcpace.YOUNG)
print(json.dumps({"default": default, "tuned": tuned, "threshold": gc.get_threshold()}))
"""


def test_cycles_are_freed_by_fewer_collections() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True,
                          timeout=60)
    seen = json.loads(done.stdout)
    assert seen["threshold"][:2] == [50_000, 20]
    # A cycle is two new container objects: CPython's default collects once per 350 cycles, the server's pace once
    # per 25,000.
    assert seen["default"]["young"] > 200
    assert seen["tuned"]["young"] <= 2 * 20 * 50_000 // 50_000 + 2
    # ... and the garbage never piles up: what is alive at any moment stays within about one young generation.
    assert seen["tuned"]["most"] < 2 * 50_000
