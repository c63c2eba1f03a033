"""What a user can do, independent of where they ask: the CLI and the Telegram bot both call these.

Functions take a sqlite3 connection and values, and return values; the caller decides the transaction (the CLI its
own connection, the server its single writer) and the rendering (terminal text, Telegram cards).
"""
from __future__ import annotations

import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from . import store
from .agents import secret_hash

NAME_RULE = "a host name is 1-32 characters of letters, digits, '.', '_' and '-'"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


class ServiceError(Exception):
    """A request that cannot be done as asked; the message is for the user."""


@dataclass(frozen=True)
class NewKey:
    host_id: int
    name: str
    key_id: str
    secret: str  # shown once, never stored


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ServiceError(f"{name!r} is not a valid name: {NAME_RULE}")
    return name


def new_key(conn: sqlite3.Connection, name: str, owner: int = 0, now: float | None = None) -> NewKey:
    """Register host `name` for `owner` and return its secret, which exists nowhere else afterwards."""
    check_name(name)
    if store.host_name_taken(conn, owner, name):
        raise ServiceError(f"you already have a host named {name!r}")
    secret = secrets.token_urlsafe(32)
    key_id = secrets.token_hex(8)
    host_id = store.insert_host(conn, name=name, owner=owner, key_id=key_id, secret_hash=secret_hash(secret),
                                created=time.time() if now is None else now)
    return NewKey(host_id=host_id, name=name, key_id=key_id, secret=secret)


@dataclass(frozen=True)
class HostSummary:
    name: str
    owner: int
    key_id: str
    online: bool
    last_seen: float | None
    samples: int
    cpu: float | None
    ram: float | None
    agent_version: str | None


def summarize(host: store.Host, now: float) -> HostSummary:
    metrics = host.last_metrics
    ram = metrics.get("ram")
    return HostSummary(
        name=host.name,
        owner=host.owner,
        key_id=host.key_id,
        online=host.is_online(now),
        last_seen=host.last_seen,
        samples=host.samples_count,
        cpu=metrics.get("cpu"),
        ram=100.0 * ram["used"] / ram["total"] if ram and ram.get("total") else None,
        agent_version=host.facts.get("agent"),
    )


def host_summaries(conn: sqlite3.Connection, owner: int | None = None, now: float | None = None) -> list[HostSummary]:
    now = time.time() if now is None else now
    return [summarize(host, now) for host in store.list_hosts(conn, owner)]
