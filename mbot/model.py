"""Value types and helpers that cores share with the edges. Pure: no IO imports (tests/test_layering.py checks).

They live here, not beside the code that stores or sends them, so a core (the views, the metrics exposition, the
session) can take a Host or a NewKey without importing sqlite3, trio or the agent listener along with it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


def secret_hash(secret: str) -> str:
    """What `hosts.secret_hash` holds for an agent secret. Secrets carry 256 random bits, so a plain SHA-256 is
    enough (no password stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Host:
    """One row of `hosts` (mbot.store reads and writes it)."""

    id: int
    name: str
    owner: int
    key_id: str
    created: float
    facts: dict[str, Any]
    epoch: int
    last_seq: int
    last_ts: float | None
    last_seen: float | None
    last_metrics: dict[str, Any]
    samples_count: int
    revoked: float | None = None  # the key was revoked then; history kept, /rotate issues a new key
    dropped: int = 0  # samples the agent had to drop from a full spool (it reports them; loss is never silent)
    rejected: int = 0  # samples acked but not stored: their timestamp was outside the window the server accepts

    @property
    def interval(self) -> float:
        return float(self.facts.get("interval", 5.0))

    def is_online(self, now: float) -> bool:
        """Seen within three intervals (at least 30 s): one late sample is not an outage."""
        return self.last_seen is not None and now - self.last_seen <= max(3 * self.interval, 30.0)


@dataclass(frozen=True)
class NewKey:
    """A host's new agent secret (mbot.service.new_key, rotate), shown once and never stored."""

    host_id: int
    name: str
    key_id: str
    secret: str


@dataclass(frozen=True)
class StoredSnapshot:
    """The latest snapshot of one kind from one host (mbot.store reads it; docs/protocol.md "Snapshots")."""

    host_id: int
    kind: str
    v: int
    ts: float  # the agent's clock
    received: float  # the server's clock
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class AlertMessage:
    """One row of `alert_messages`: an alert's life in the chat (mbot/telegram/alert_delivery.py)."""

    id: int
    host_id: int
    metric: str  # the rule's metric, or "offline"
    series: str
    fired: float
    procs: list[dict[str, Any]] | None  # the top processes when it fired, if captured
    chat_id: int | None  # where its message went, once sent
    message_id: int | None
    photo: bool  # the message is a photo: edits change its caption
    resolved: float | None
    thread_id: int | None = None  # the forum topic it went to (a group bound in a topic)


@dataclass(frozen=True)
class Binding:
    """A host bound to a group (/bind): its alerts also go there, to topic thread_id if bound in one."""

    host_id: int
    chat_id: int
    thread_id: int | None
    bound_by: int  # the user who bound it (its owner then): the binding counts only while they still own it


@dataclass(frozen=True)
class StatusPage:
    """A status message the bot keeps current (/statuspage): one per chat and user."""

    chat_id: int
    owner: int  # the user who asked for it: it lists only their hosts
    thread_id: int | None
    message_id: int
    hosts: tuple[int, ...] | None  # the chosen hosts; None: all the owner's hosts, as they come and go
    text: str  # what the message says now (an edit to the same text is not sent)
    edited: float  # wall-clock time of the last send or edit
    lang: str = "en"  # the language it was asked for in (mbot.i18n): its edits speak it too
