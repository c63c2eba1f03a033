"""What a user can do, independent of where they ask: the CLI and the Telegram bot both call these.

Functions take a sqlite3 connection and values, and return values; the caller decides the transaction (the CLI its
own connection, the server its single writer) and the rendering (terminal text, Telegram cards).
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from . import access, checks, members, store, users
from .alerts import AlertRule
from .i18n import _
# NewKey is also read as service.NewKey by modules written before mbot.model; new code imports it from there.
from .i18n import N_, _, n_
from .model import Host, NewKey, secret_hash

NAME_RULE = N_("a host name is 1-32 characters of letters, digits, '.', '_' and '-'")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


class ServiceError(Exception):
    """A request that cannot be done as asked; the message is for the user."""


class NoSuchHost(ServiceError):
    """Also what a user gets for a host that exists but is someone else's: no hint either way."""

    def __init__(self) -> None:
        super().__init__(_("No such host. /hosts lists yours."))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ServiceError(_("{name!r} is not a valid name: {rule}", name=name, rule=_(NAME_RULE)))
    return name


class HostLimit(ServiceError):
    """The owner has as many hosts as MBOT_MAX_HOSTS_PER_USER allows. (English says "hosts" for one too, as the
    CLI always has; Russian has its three forms.)"""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(n_("{n} hosts already, the most this server allows per user (MBOT_MAX_HOSTS_PER_USER="
                            "{limit}): /revoke one and delete its history to make room",
                            "{n} hosts already, the most this server allows per user (MBOT_MAX_HOSTS_PER_USER="
                            "{limit}): /revoke one and delete its history to make room", count, limit=limit))
        self.count, self.limit = count, limit


def new_key(conn: sqlite3.Connection, name: str, owner: int = 0, now: float | None = None, *,
            max_hosts: int | None = None) -> NewKey:
    """Register host `name` for `owner` and return its secret, which exists nowhere else afterwards.

    With `max_hosts`, an owner who has that many hosts (revoked ones with kept history count: they hold storage)
    gets HostLimit. The count and the insert share the caller's transaction, so two requests cannot both slip in."""
    check_name(name)
    _refuse_taken(name, store.hosts_named(conn, name, owner))
    if max_hosts is not None:
        count = store.count_hosts(conn, owner)
        if count >= max_hosts:
            raise HostLimit(count, max_hosts)
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
    dropped: int


def summarize(host: Host, now: float) -> HostSummary:
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
        dropped=host.dropped,
    )


def host_summaries(conn: sqlite3.Connection, owner: int | None = None, now: float | None = None) -> list[HostSummary]:
    now = time.time() if now is None else now
    return [summarize(host, now) for host in store.list_hosts(conn, owner)]


def _refuse_taken(name: str, taken: list[Host]) -> None:
    """Names are unique per owner without regard to case: `BOX1` next to `box1` would make every command that
    names one of them a guess."""
    if not taken:
        return
    other = taken[0].name
    if other == name:
        raise ServiceError(_("you already have a host named {name!r}", name=name))
    raise ServiceError(_("you already have a host named {name!r}; names that differ only in case are not allowed",
                         name=other))


def by_name(hosts: list[Host], ref: str) -> list[Host]:
    """Of the hosts whose name is `ref` but for case (store.hosts_named), those `ref` means: the ones spelled
    exactly so if any (names that differ only in case, from before they were refused, stay reachable), else all."""
    return [h for h in hosts if h.name == ref] or hosts


def resolve_host(conn: sqlite3.Connection, owner: int, ref: str) -> Host:
    """A host of `owner` by name (any case, when only one name fits) or by the first 8+ characters of its key id
    (as the original's <key|name>)."""
    named = by_name(store.hosts_named(conn, ref, owner), ref)
    if len(named) == 1:
        return named[0]
    if named:
        raise ServiceError(_("{ref!r} could be {names}: type the name exactly as listed", ref=ref,
                             names=_(" or ").join(h.name for h in named)))
    if len(ref) >= 8:
        matches = store.hosts_by_key_prefix(conn, owner, ref.lower())
        if len(matches) == 1:
            return matches[0]
    raise NoSuchHost()


def any_owner_host(conn: sqlite3.Connection, ref: str, owner: int | None) -> Host:
    """The CLI (and the control socket, for the CLI) sees every owner's hosts: a name two users share needs --owner.
    Names match as in the chat (resolve_host): any case when one name fits, the exact spelling first."""
    if owner is not None:
        try:
            return resolve_host(conn, owner, ref)
        except NoSuchHost:
            raise ServiceError(f"user {owner} has no host named {ref!r}; `python -m mbot hosts` lists them") from None
    matches = by_name(store.hosts_named(conn, ref), ref)
    if not matches and len(ref) >= 8:
        matches = [h for h in store.list_hosts(conn) if h.key_id.startswith(ref.lower())]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ServiceError(f"no host named {ref!r}; `python -m mbot hosts` lists them")
    if len({h.owner for h in matches}) == len(matches):
        owners = ", ".join(str(h.owner) for h in matches)
        raise ServiceError(f"several users have a host named {ref!r} (owners {owners}): add --owner")
    names = ", ".join(f"{h.name} (owner {h.owner})" if h.owner else h.name for h in matches)
    raise ServiceError(f"{ref!r} could be {names}: type the name exactly as `python -m mbot hosts` lists it"
                       " (and --owner)")


class NotAllowed(ServiceError):
    """A user with a role on the host asked for what their role does not allow."""

    def __init__(self, host: Host, role: str, action: str) -> None:
        super().__init__(_("You are a {role} of {name}: that takes its {needed}. Ask its owner.",
                           role=access.role_name(role), name=host.name,
                           needed=access.role_name(access.ACTIONS.get(action))))


def allowed(conn: sqlite3.Connection, host: Host, user_id: int, action: str) -> str:
    """THE access check (mbot.access), for commands and every button press alike: the user's role on the host if
    it allows `action`. No role at all reads as a missing host (no hint that it exists); too small a role says so."""
    role = access.role_of(host.owner, user_id, store.role_on(conn, host.id, user_id))
    if role is None:
        raise NoSuchHost()
    if not access.allows(role, action):
        raise NotAllowed(host, role, action)
    return role


def host_for(conn: sqlite3.Connection, user_id: int, host_id: int, action: str) -> Host:
    """A host by id (a button's data, a confirmation) if `user_id` may do `action` on it now: a forged id, or a
    role removed since the button was made, gets the answer a missing host gets."""
    host = store.host_by_id(conn, host_id)
    if host is None:
        raise NoSuchHost()
    allowed(conn, host, user_id, action)
    return host


def resolve(conn: sqlite3.Connection, user_id: int, ref: str, action: str) -> Host:
    """A host by name (or key id prefix) among those `user_id` may see, if they may do `action` on it. Their own
    hosts come first: a host shared with them is found when none of theirs has that name."""
    try:
        host = resolve_host(conn, user_id, ref)
    except NoSuchHost:
        host = _shared(conn, user_id, ref)
    allowed(conn, host, user_id, action)
    return host


def _shared(conn: sqlite3.Connection, user_id: int, ref: str) -> Host:
    shared = [host for host, role in store.hosts_of_user(conn, user_id) if role != access.OWNER]
    named = by_name([h for h in shared if h.name.lower() == ref.lower()], ref)
    if not named and len(ref) >= 8:
        named = [h for h in shared if h.key_id.startswith(ref.lower())]
    if len(named) == 1:
        return named[0]
    if named:
        raise ServiceError(_("Several hosts shared with you are named {name}: use the first 8 characters of its "
                             "key id (/hosts shows the hosts).", name=ref))
    raise NoSuchHost()


def rename(conn: sqlite3.Connection, owner: int, ref: str, new_name: str) -> Host:
    host = resolve(conn, owner, ref, "rename")
    check_name(new_name)
    _refuse_taken(new_name, [h for h in store.hosts_named(conn, new_name, owner) if h.id != host.id])
    store.rename_host(conn, host.id, new_name)
    return host


def rotate(conn: sqlite3.Connection, owner: int, host_id: int) -> NewKey:
    """A new secret for the host; the old one stops working with this commit."""
    host = host_for(conn, owner, host_id, "rotate")
    secret = secrets.token_urlsafe(32)
    store.set_secret(conn, host.id, secret_hash(secret), revoked=None)
    return NewKey(host_id=host.id, name=host.name, key_id=host.key_id, secret=secret)


def revoke(conn: sqlite3.Connection, owner: int, host_id: int, *, wipe: bool, now: float | None = None) -> Host:
    """Delete the host's key; with `wipe` its history and the host too. /rotate can give a kept host a new key."""
    host = host_for(conn, owner, host_id, "revoke")
    if wipe:
        store.delete_host(conn, host.id)
    else:
        # Not a SHA-256 hex digest, so no secret can ever match it.
        store.set_secret(conn, host.id, f"revoked-{secrets.token_hex(16)}", revoked=time.time() if now is None else now)
    return host


# --- checks from the host (mbot.checks) ---------------------------------------------------------------------------


def add_check(conn: sqlite3.Connection, host: Host, target: str, every: float, *, now: float | None = None,
              down_after: int = checks.DEFAULT_DOWN_AFTER, max_per_host: int = checks.MAX_PER_HOST,
              max_per_user: int = checks.MAX_PER_USER) -> checks.CheckSpec:
    """A new check of `host` (target and every already validated, mbot.checks), with its two alert rules (down;
    certificate under DEFAULT_CERT_DAYS days), in the caller's transaction. Bounds: per host and per owner."""
    existing = store.checks_of_host(conn, host.id)
    if len(existing) >= max_per_host:
        raise ServiceError(n_("{name} has {n} checks, the most a host may have: remove one first "
                              "(/check {name} del CHECK)",
                              "{name} has {n} checks, the most a host may have: remove one first "
                              "(/check {name} del CHECK)", len(existing), name=host.name))
    if host.owner and store.count_checks_of_owner(conn, host.owner) >= max_per_user:
        raise ServiceError(n_("you have {n} checks, the most a user may have: remove one first",
                              "you have {n} checks, the most a user may have: remove one first", max_per_user))
    same = [spec.name for spec in existing if spec.target == target]
    if same:
        raise ServiceError(_("{name} already checks {target} (as {check})", name=host.name, target=target,
                             check=same[0]))
    name = checks.default_name(target, [spec.name for spec in existing])
    check_id = store.insert_check(conn, host.id, name, target, every, down_after,
                                  time.time() if now is None else now)
    down_metric, cert_metric = checks.rule_metrics(name)
    for rule in (AlertRule(host.id, down_metric, members.THRESHOLD, below=True),
                 AlertRule(host.id, cert_metric, checks.DEFAULT_CERT_DAYS, below=True)):
        store.put_alert_rule(conn, host.id, rule.metric, json.dumps(rule.as_dict()))
    return checks.CheckSpec(check_id, host.id, name, target, every, down_after)


def find_check(conn: sqlite3.Connection, host: Host, ref: str) -> checks.CheckSpec:
    """A check of `host` by name (any case), number or target."""
    found = [spec for spec in store.checks_of_host(conn, host.id)
             if ref.lower() in (spec.name, str(spec.id), spec.target.lower())]
    if not found:
        raise ServiceError(_("{name} has no check {ref!r}: /checks {name} lists them", name=host.name, ref=ref[:60]))
    return found[0]


def delete_check(conn: sqlite3.Connection, host: Host, ref: str) -> checks.CheckSpec:
    """Remove a check and its alert rules (the ones /check added, or /setalert set since)."""
    spec = find_check(conn, host, ref)
    store.delete_check(conn, spec.id)
    for metric in checks.rule_metrics(spec.name):
        store.delete_alert_rule(conn, host.id, metric)
    return spec


# --- sharing (mbot.access) ---------------------------------------------------------------------------------------


def share(conn: sqlite3.Connection, owner: int, ref: str, role: str, code_hash: str, now: float) -> Host:
    """A one-time link's code (its hash) that gives `role` on the host to whoever opens it (users.redeem), made by
    its owner alone; audited."""
    host = resolve(conn, owner, ref, "share")
    users.add_invite(conn, code_hash, now, owner, kind=users.SHARE, host_id=host.id, role=role)
    store.add_audit(conn, ts=now, user_id=owner, host_id=host.id, host_name=host.name, action="share",
                    outcome=f"link for a {role}")
    return host


def person_named(conn: sqlite3.Connection, host_id: int, ref: str) -> int | None:
    """The user with a role on the host whom `ref` names: their id, @username or first name (any case)."""
    ref = ref.strip()
    for user_id, _role, username, first_name in store.roles_of_host(conn, host_id):
        if ref == str(user_id) or (username and ref.lstrip("@").lower() == username.lower()) \
                or (first_name and ref.lower() == first_name.lower()):
            return user_id
    return None


def unshare(conn: sqlite3.Connection, owner: int, host_id: int, user_id: int, now: float) -> Host:
    """Take a user's role on the host away (the owner alone); audited. Their default (/set) of it goes too."""
    host = host_for(conn, owner, host_id, "unshare")
    if not store.remove_role(conn, host.id, user_id):
        raise ServiceError(_("That person has no role on {name} (any more).", name=host.name))
    store.add_audit(conn, ts=now, user_id=owner, host_id=host.id, host_name=host.name, action="unshare",
                    outcome="removed", target=user_id)
    return host
