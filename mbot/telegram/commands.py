"""Chat text -> Command values. Pure: no IO, no database; unit-tested line by line.

A bad command never yields silence: it raises UsageError carrying the usage line of that command (or, for an unknown
command, a pointer to /help), which the bot sends back as is.
"""
from __future__ import annotations

from dataclasses import dataclass


class UsageError(Exception):
    """The text is not a valid command; str(self) is what to tell the user."""


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()


# name -> (usage, min args, max args). The usage line is what a user sees after a mistake.
SPECS: dict[str, tuple[str, int, int]] = {
    # /start CODE is what a t.me/<bot>?start=CODE invite link makes Telegram send (mbot.users).
    "start": ("/start", 0, 1),
    "help": ("/help", 0, 0),
    "newkey": ("/newkey NAME - register a host and get its agent settings", 1, 1),
    "hosts": ("/hosts - your hosts, online or not", 0, 0),
    "agent": ("/agent - the agent file, to copy to a host", 0, 0),
    "status": ("/status [NAME] - a summary, or one host's card", 0, 1),
    "rename": ("/rename OLD NEW - rename a host", 2, 2),
    "revoke": ("/revoke NAME - delete a host's key and disconnect its agent", 1, 1),
    "rotate": ("/rotate NAME - issue a new secret; the old one stops working at once", 1, 1),
    # The alert commands check their own arguments (mbot.alerts), with more to say than an argument count.
    "setalert": ("/setalert NAME METRIC THRESHOLD [FOR] - alert when a metric crosses a threshold", 0, 8),
    "delalert": ("/delalert NAME METRIC - remove an alert", 0, 8),
    "alerts": ("/alerts - your alert rules and their state", 0, 0),
    "plot": ("/plot NAME METRICS SPAN... [LIMIT] [UNIT] - a chart, e.g. /plot box1 cpu;gpu 2d 3h 80", 0, 16),
    "mute": ("/mute NAME DURATION - no notifications from a host for a while", 0, 8),
    "unmute": ("/unmute NAME - notifications back on", 0, 8),
    "invite": ("/invite - a one-time link that lets one more person use this bot (admin only)", 0, 0),
}

# Left out of /help: /start is what opening the bot sends, /help is the list itself.
NOT_IN_HELP = ("start", "help")
ADMIN_ONLY = ("invite",)

# What the command menu (setMyCommands) shows.
MENU: list[tuple[str, str]] = [
    ("status", "Summary of your hosts, or one host's card"),
    ("hosts", "Your hosts, online or offline"),
    ("plot", "A chart: /plot NAME METRICS SPAN [LIMIT] [UNIT]"),
    ("newkey", "Register a host: /newkey NAME"),
    ("agent", "The agent file to run on a host"),
    ("rename", "Rename a host: /rename OLD NEW"),
    ("rotate", "New secret for a host: /rotate NAME"),
    ("revoke", "Delete a host's key: /revoke NAME"),
    ("alerts", "Your alert rules and their state"),
    ("setalert", "Alert: /setalert NAME METRIC THRESHOLD [FOR]"),
    ("delalert", "Remove an alert: /delalert NAME METRIC"),
    ("mute", "Silence a host: /mute NAME DURATION"),
    ("unmute", "Notifications back on: /unmute NAME"),
    ("help", "What mbot can do"),
]


def usage(name: str) -> str:
    return f"Usage: {SPECS[name][0]}"


def parse(text: str, bot_username: str | None = None) -> Command | None:
    """A command, or None when the text is not a command at all (plain chat is ignored)."""
    words = text.split()
    if not words or not words[0].startswith("/") or len(words[0]) == 1:
        return None
    name, _, addressed_to = words[0][1:].partition("@")
    if addressed_to and bot_username and addressed_to.lower() != bot_username.lower():
        return None  # a command for another bot in a group
    name = name.lower()
    if name not in SPECS:
        raise UsageError(f"Unknown command /{name[:32]}. /help lists what I understand.")
    _, low, high = SPECS[name]
    args = tuple(words[1:])
    if not low <= len(args) <= high:
        raise UsageError(usage(name))
    return Command(name, args)
