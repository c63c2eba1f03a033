"""The speed test: throughput between a host and the mbot server over the agent's own TLS WebSocket. Pure: no IO.

`/speedtest NAME` (and the card's button) measures the path to the mbot server, not to the internet, in both
directions, one after the other, each bounded in time (SECONDS) and bytes (MAX_BYTES):

- download: the server sends a `speedtest` frame (dir "down"), then binary frames of CHUNK random bytes as fast as
  TCP takes them, then `speedtest_end`; the agent counts what it received and answers `{"type": "speedtest", "id",
  "bytes"}`. Throughput: the bytes sent, capped by what the agent says it got, over the server's time from the
  first byte to that answer (TCP order: the answer cannot come before the last byte arrived).
- upload: the server sends a `speedtest` frame (dir "up", seconds, bytes), and for that one test accepts binary
  frames from the agent up to `bytes` (over it: closed with 1008); the agent sends for `seconds`, then answers.
  Throughput: the bytes the server itself counted over its own time from the request to the last byte.

Both measurements are the server's own: an agent can make its link look slower, never faster. One speed test runs
at a time per server (a lock in the hub): the others' samples share the event loop with one stream, not many.
The results are kept as series of the host (`speed_down`, `speed_up`, bytes/s), folded into its next live sample
like the link figures (mbot/linkquality.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .i18n import N_, _, number

SECONDS = 10.0  # each way
MAX_BYTES = 1 << 30  # each way: 1 GiB (a gigabit link fills about 10 s)
CHUNK = 64 * 1024
ANSWER_TIMEOUT = 15.0  # the agent's answer after the end of its direction


def start(test_id: str, direction: str, seconds: float, max_bytes: int) -> str:
    return json.dumps({"type": "speedtest", "id": test_id, "dir": direction, "seconds": seconds, "bytes": max_bytes})


def end(test_id: str) -> str:
    return json.dumps({"type": "speedtest_end", "id": test_id})


@dataclass(frozen=True)
class Throughput:
    direction: str  # "down" (server -> host) or "up"
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def mbit(rate: float) -> str:
    return f"{rate * 8 / 1e6:.1f} Mbit/s"


def reply(host_name: str, down: Throughput | None, up: Throughput | None) -> str:
    """What the chat says (plain text; the caller escapes it)."""
    lines = [_("Speed test of {name}: the path between the host and this mbot server, over the agent's TLS "
               "connection (not the internet).", name=host_name)]
    for label, result in ((N_("Download (server -> host)"), down), (N_("Upload (host -> server)"), up)):
        if result is None:
            lines.append(_("{label}: no result (the agent did not answer, or refused: it takes one upload a "
                           "minute).", label=_(label)))
        else:
            lines.append(_("{label}: {rate} Mbit/s ({mb} MB in {seconds} s)", label=_(label),
                           rate=number(result.rate * 8 / 1e6), mb=number(result.bytes / 1e6),
                           seconds=number(result.seconds)))
    return "\n".join(lines)


def metrics(down: Throughput | None, up: Throughput | None) -> dict[str, float]:
    """The `speed` object folded into the host's next live sample."""
    out = {}
    if down is not None:
        out["down"] = down.rate
    if up is not None:
        out["up"] = up.rate
    return out
