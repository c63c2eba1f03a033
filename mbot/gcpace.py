"""The pace of CPython's cyclic garbage collector in the server's processes (`python -m mbot` and its listener
processes), set once at their start.

CPython's defaults suit small heaps: a young collection per 700 new container objects, whose survivors move on, and
a full collection, a walk over every object, whenever a quarter as many as the heap holds have moved on since the
last. A server holding thousands of agents has millions of long-lived objects (each connection's tasks, TLS and
WebSocket state, session), and whatever a young collection finds still alive moves on: the frames in flight (parsed
samples, the writer's and the channel's queues, a ping's task awaiting its pong), which die soon after by reference
counting. So full collections came every ~10 s at 5,000 agents, each ~0.4 s of CPU with the event loop stopped:
measured with gc.callbacks, a quarter to a third of every process's CPU (docs/architecture.md, issue 18).

With a young generation of 50,000 objects and a middle one collected once per 20 young collections, what is in
flight at a collection is a small share of what it holds, so little moves on and a full collection is rare (none in
a 40 s window at 5,000 agents); a young collection costs ~50 ms then, every few seconds. Cycles (trio's
cancellations, a closed connection's objects) are still freed, a young collection or two later than before.
"""
from __future__ import annotations

import gc

YOUNG = 50_000  # new container objects between two young collections (CPython's default: 700)
MIDDLE = 20  # young collections per collection of the middle generation (default: 10)


def tune() -> None:
    """Set this process's collector to the server's pace (the oldest generation's threshold stays CPython's)."""
    gc.set_threshold(YOUNG, MIDDLE, gc.get_threshold()[2])
