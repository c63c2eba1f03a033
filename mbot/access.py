"""Who may do what on a host: the one table of actions and the roles they need. Pure: values in, values out.

A host has one owner (hosts.owner, who registered it) and any number of users the owner shared it with, each as a
viewer or an operator (`host_roles`, granted by a one-time /share link). Roles are ranked owner > operator >
viewer > none; every action names the least role that may do it, and every command and every button press asks
`allows` at the moment it is made (a role removed a second ago is gone for the next press).
"""
from __future__ import annotations

from typing import Final

from .i18n import _

OWNER: Final = "owner"
OPERATOR: Final = "operator"
VIEWER: Final = "viewer"
GRANTABLE: Final = (VIEWER, OPERATOR)  # what /share hands out: ownership is never shared

_RANK: Final = {VIEWER: 1, OPERATOR: 2, OWNER: 3}

# THE table: action -> the least role that may do it. Bot commands and callback actions use these names.
ACTIONS: Final[dict[str, str]] = {
    # seeing: the card, charts, processes, containers, diagnostics, checks, and receiving its alerts
    "card": VIEWER, "chart": VIEWER, "plot": VIEWER, "top": VIEWER, "procs": VIEWER, "containers": VIEWER,
    "info": VIEWER, "checks": VIEWER, "alerts": VIEWER, "aprocs": VIEWER, "set": VIEWER,
    # acting on the machine or its alerts: Refresh (it asks the server anew), power, tests, mute, ack, rules
    "refresh": OPERATOR, "power": OPERATOR, "stability": OPERATOR, "speedtest": OPERATOR, "mute": OPERATOR,
    "unmute": OPERATOR, "ack": OPERATOR, "setalert": OPERATOR, "delalert": OPERATOR, "check": OPERATOR,
    # the host itself and who sees it
    "rename": OWNER, "rotate": OWNER, "revoke": OWNER, "share": OWNER, "shares": OWNER, "unshare": OWNER,
}


def role_of(owner: int, user_id: int, granted: str | None) -> str | None:
    """The user's role on a host owned by `owner`, given the role granted to them there (None: none). Owner 0 is
    the CLI's own hosts, whose user 0 is the CLI (Telegram ids are never 0)."""
    if user_id == owner:
        return OWNER
    return granted if granted in _RANK else None


def allows(role: str | None, action: str) -> bool:
    """Whether `role` may do `action`; an action missing from the table is allowed to nobody."""
    needed = ACTIONS.get(action)
    return role is not None and needed is not None and _RANK.get(role, 0) >= _RANK[needed]


def parse_role(word: str) -> str | None:
    """A role /share may grant, from what the owner typed (any case), or None."""
    word = word.lower()
    return word if word in GRANTABLE else None


def role_name(role: str | None) -> str:
    """A role as the user reads it."""
    names = {OWNER: _("owner"), OPERATOR: _("operator"), VIEWER: _("viewer")}
    return names.get(role or "", _("nobody"))
