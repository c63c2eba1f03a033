"""Who may use the bot: users and their roles, one-time invite and claim codes, per-user rate limits.

The logic is pure (codes, hashes, links, roles, token buckets: values in, values out); the few sqlite functions at
the end take a connection first and leave the transaction to the caller (the server's single writer, or the CLI's
own connection), like mbot.service.

The bot is closed by default:
- With ALLOWED_USERS, those ids are users and the first of them is the admin (as documented since the start).
- Without it, a fresh server has no users. At each start while it has none, it makes a new claim code (the older one
  stops working) and logs it once; whoever sends it first (`/start CODE`, which is what the t.me link makes Telegram
  send) becomes the admin. A new code per start is the simple safe choice: a code seen in an old log is dead.
- An invite (an admin's /invite, `python -m mbot invite`) adds one user, works once and expires after 24 h.
  Redeemed on a server that has no users yet (and no ALLOWED_USERS), it makes that person the admin.
- Users added by a code are rows of `users` and keep their access across restarts.
- A share link (a host's owner's /share, mbot.access) is an invite that also names a host and a role: whoever opens
  it gets that role on that host, and becomes a user first if they were not one. Same rules: one use, 24 h, hashed.

Only sha256(code) is stored; the code itself appears once: in the log line, the CLI output or the chat reply that
issues it. Codes come from secrets.token_urlsafe (192 bits), so guessing is hopeless; wrong guesses are rate-limited
anyway, to bound the work and the replies a stranger can cause.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from . import store

ADMIN, USER = "admin", "user"
CLAIM, INVITE, SHARE = "claim", "invite", "share"
INVITE_TTL = 24 * 3600.0
USERNAME_KEY = "telegram.username"  # kv: the bot's @username as getMe last said, so the CLI can make t.me links

# Telegram deep-link start parameters are 1-64 characters of A-Z a-z 0-9 _ -; token_urlsafe(24) gives 32 of them.
_CODE = re.compile(r"[A-Za-z0-9_-]{16,64}")


# --- codes -------------------------------------------------------------------------------------------------------


def new_code() -> str:
    return secrets.token_urlsafe(24)


def code_hash(code: str) -> str:
    """What is stored and compared: a lookup by hash, so the stored value is useless to whoever reads the file."""
    return hashlib.sha256(code.encode()).hexdigest()


def looks_like_code(text: str) -> bool:
    """Cheap filter before any database work: a code is what new_code() makes, nothing longer or stranger."""
    return _CODE.fullmatch(text) is not None


def invite_link(username: str | None, code: str) -> str | None:
    """The t.me link that opens the bot and sends it `/start CODE`; None while the bot's username is unknown."""
    return f"https://t.me/{username}?start={code}" if username else None


def role_of(user_id: int, allowed_users: Sequence[int] | None, users: Mapping[int, str]) -> str | None:
    """ADMIN, USER or None (a stranger). The first of ALLOWED_USERS is an admin; the `users` table adds to them."""
    if allowed_users and user_id == allowed_users[0]:
        return ADMIN
    if user_id in users:
        return users[user_id]
    if allowed_users and user_id in allowed_users:
        return USER
    return None


# --- bounded per-key state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the next token (0 when allowed)
    first_refusal: bool  # the first refusal since the last allowed take: the moment to tell the user, once


class RateLimit:
    """Token buckets per key (a user id): `burst` at once, then one per `every` seconds.

    Memory is bounded: past `max_keys` keys, buckets that are full again are dropped first (a full bucket is
    exactly what a new key gets, so nothing is forgotten), then the least recently used ones.
    """

    def __init__(self, burst: int, every: float, *, max_keys: int = 10_000) -> None:
        if burst < 1 or every <= 0:
            raise ValueError("burst must be >= 1 and every > 0")
        self.burst, self.every, self.max_keys = burst, every, max_keys
        self._buckets: OrderedDict[Hashable, list] = OrderedDict()  # key -> [tokens, as of, told]

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, state: list, now: float) -> float:
        return min(float(self.burst), state[0] + max(0.0, now - state[1]) / self.every)

    def take(self, key: Hashable, now: float) -> Decision:
        state = self._buckets.get(key)
        if state is None:
            state = self._buckets[key] = [float(self.burst), now, False]
            self._trim(now)
        else:
            self._buckets.move_to_end(key)
        tokens = self._tokens(state, now)
        if tokens >= 1.0:
            state[:] = [tokens - 1.0, now, False]
            return Decision(True, 0.0, False)
        first = not state[2]
        state[:] = [tokens, now, True]
        return Decision(False, (1.0 - tokens) * self.every, first)

    def _trim(self, now: float) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        for key in [k for k, state in self._buckets.items() if self._tokens(state, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


class Seen:
    """A set that forgets its oldest members past `limit`: "told once" bookkeeping in bounded memory (someone
    forgotten may be told a second time, which is harmless)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def add(self, key: Hashable) -> bool:
        """True when `key` is new (so the caller acts once)."""
        if key in self._keys:
            return False
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)
        return True


# --- storage (sqlite; the caller owns the transaction) -----------------------------------------------------------


def load_users(conn: sqlite3.Connection) -> dict[int, str]:
    return {row[0]: row[1] for row in conn.execute("SELECT id, role FROM users")}


def first_admin(conn: sqlite3.Connection) -> int | None:
    """The user who became admin first (by the claim, or the first invite on a server without ALLOWED_USERS)."""
    row = conn.execute("SELECT id FROM users WHERE role = ? ORDER BY added LIMIT 1", (ADMIN,)).fetchone()
    return int(row[0]) if row else None


def count_users(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users").fetchone()[0]


def reset_claim(conn: sqlite3.Connection, new_hash: str | None, now: float) -> bool:
    """Delete every claim code; then, with `new_hash` and while `users` is empty, store it as the one claim.

    True when the new claim was stored (and its code should be logged)."""
    conn.execute("DELETE FROM invites WHERE kind = ?", (CLAIM,))
    if new_hash is None or count_users(conn):
        return False
    conn.execute("INSERT INTO invites (code_hash, kind, created, expires, created_by) VALUES (?, ?, ?, NULL, 0)",
                 (new_hash, CLAIM, now))
    return True


def add_invite(conn: sqlite3.Connection, hashed: str, now: float, created_by: int,
               ttl: float = INVITE_TTL, *, kind: str = INVITE, host_id: int | None = None,
               role: str | None = None) -> float:
    """Store an invite, or with kind SHARE a share link giving `role` on `host_id` (one use, expires after
    `ttl`); expired ones are swept here. Returns the expiry time."""
    conn.execute("DELETE FROM invites WHERE expires IS NOT NULL AND expires <= ?", (now,))
    expires = now + ttl
    conn.execute("INSERT INTO invites (code_hash, kind, created, expires, created_by, host_id, role) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (hashed, kind, now, expires, created_by, host_id, role))
    return expires


@dataclass(frozen=True)
class Redeemed:
    role: str  # the user's role in the bot (ADMIN or USER)
    host_id: int | None = None  # a share link: the host it gave a role on, and that role
    host_role: str | None = None


def redeem(conn: sqlite3.Connection, hashed: str, user_id: int, now: float, *, first_is_admin: bool,
           shares_only: bool = False) -> Redeemed | None:
    """Use a code for `user_id`: what it granted, or None for an unknown, used or expired code.

    The code is spent whatever happens next (one use, and an expired one is gone). A claim makes an admin; an invite
    makes a user, or the admin when `first_is_admin` (no ALLOWED_USERS) and nobody is a user yet; a share link gives
    its role on its host (while its maker still owns it) and makes a user of a stranger. Anyone becoming a user ends
    the claim: it exists only while the server has no users. `shares_only` (the code comes from a user): an invite
    or a claim is left unspent for whoever it was meant for."""
    row = conn.execute("SELECT kind, expires, created_by, host_id, role FROM invites WHERE code_hash = ?",
                       (hashed,)).fetchone()
    if row is None or (shares_only and row[0] != SHARE):
        return None
    conn.execute("DELETE FROM invites WHERE code_hash = ?", (hashed,))
    kind, expires, created_by, host_id, host_role = row
    if expires is not None and expires <= now:
        return None
    if kind == SHARE:
        host = store.host_by_id(conn, host_id)
        if host is None or host.owner != created_by:  # the host is gone, or its maker no longer owns it
            return None
        if user_id == created_by:  # the owner opened their own link: spent, nothing to give
            kind = INVITE
        else:
            store.grant_role(conn, host_id, user_id, host_role, created_by, now)
    existing = conn.execute("SELECT role FROM users WHERE id = ?", (user_id,)).fetchone()
    if existing is not None or shares_only:
        role = existing[0] if existing is not None else USER
    else:
        role = ADMIN if kind == CLAIM or (kind == INVITE and first_is_admin and not count_users(conn)) else USER
        conn.execute("INSERT INTO users (id, role, added, invited_by) VALUES (?, ?, ?, ?)",
                     (user_id, role, now, None if kind == CLAIM else created_by))
        conn.execute("DELETE FROM invites WHERE kind = ?", (CLAIM,))
    return Redeemed(role, host_id, host_role) if kind == SHARE else Redeemed(role)
