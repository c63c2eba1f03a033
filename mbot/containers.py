"""A host's containers as people read them: the `containers` snapshot in, ordered rows and lines out. Pure.

The chat's /containers (mbot.telegram.views) and `python -m mbot containers` (mbot.cli) show the same rows: those
in trouble first (not running, unhealthy), then the rest by name. What counts as trouble is what the agent's `down`
series says for the containers it sends series for (docs/protocol.md, "Snapshots").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .i18n import N_, _, n_

KIND = "containers"


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    state: str  # the engine's word: running, exited, restarting, paused, created, dead ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    restarts: int
    cpu: float | None  # percent of the whole host; None when not running (or not measured yet)
    mem: float | None  # bytes

    @property
    def trouble(self) -> str | None:
        """Why this container needs a look ("exited", "unhealthy"), or None when it runs as it should."""
        if self.state != "running":
            return self.state or "unknown"
        return "unhealthy" if self.health == "unhealthy" else None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "image": self.image, "state": self.state, "health": self.health,
                "restarts": self.restarts, "cpu": self.cpu, "mem": self.mem}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rows(items: Iterable[dict[str, Any]]) -> list[Container]:
    """Stored snapshot items -> Containers, trouble first, then by name. Items were validated when they arrived,
    but a stored row may be older or damaged: missing fields read as empty."""
    out = []
    for item in items:
        restarts = item.get("restarts")
        out.append(Container(str(item.get("name", "")), str(item.get("image", "")), str(item.get("state", "")),
                             str(item.get("health", "")),
                             restarts if isinstance(restarts, int) and not isinstance(restarts, bool) else 0,
                             _number(item.get("cpu")), _number(item.get("mem"))))
    out.sort(key=lambda c: (c.trouble is None, c.name))
    return out


# The engine's words for a state, in the chat's language: one container's (its row) and a count's (the tally).
# A word not here (a newer engine's) is shown as the engine says it.
_STATE_WORDS = {"exited": N_("exited"), "unhealthy": N_("unhealthy"), "restarting": N_("restarting"),
                "paused": N_("paused"), "created": N_("created"), "dead": N_("dead"), "removing": N_("removing"),
                "unknown": N_("unknown")}
_COUNT_WORDS = {"running": N_("{n} running"), "exited": N_("{n} exited"), "unhealthy": N_("{n} unhealthy"),
                "restarting": N_("{n} restarting"), "paused": N_("{n} paused"), "created": N_("{n} created"),
                "dead": N_("{n} dead"), "removing": N_("{n} removing"), "unknown": N_("{n} unknown")}


def trouble_word(trouble: str) -> str:
    """A Container.trouble as the chat says it."""
    return _(_STATE_WORDS[trouble]) if trouble in _STATE_WORDS else trouble


def tally(containers: Iterable[Container]) -> str:
    """"12 containers: 10 running, 1 exited, 1 unhealthy"."""
    counts: dict[str, int] = {}
    total = 0
    for c in containers:
        total += 1
        word = c.trouble or "running"
        counts[word] = counts.get(word, 0) + 1
    if not total:
        return _("no containers")
    parts = sorted(counts.items(), key=lambda kv: (kv[0] != "running", -kv[1], kv[0]))
    return (n_("{n} container", "{n} containers", total) + ": "
            + ", ".join(_(_COUNT_WORDS[word], n=n) if word in _COUNT_WORDS else f"{n} {word}" for word, n in parts))


def series_tally(containers: dict[str, dict[str, float]]) -> str:
    """The card's line from a sample's metrics["containers"] (down codes): "5 up, 1 down"."""
    down = sum(1 for entry in containers.values() if entry.get("down", 0) > 0)
    up = len(containers) - down
    return _("{n} up", n=up) + (", " + _("{n} down", n=down) if down else "")
