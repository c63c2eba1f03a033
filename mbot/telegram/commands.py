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


@dataclass(frozen=True)
class Spec:
    """One command: everything /help, the command menu and the parser know about it."""

    usage: str  # the usage line a user sees after a mistake, and the command's line in /help
    low: int  # fewest arguments
    high: int  # most arguments
    menu: str | None = None  # its text in the command menu (setMyCommands); None: not in the menu
    in_help: bool = True
    admin: bool = False  # listed for admins only (the command checks the user itself)


# THE table of commands, in the order /help and the menu list them (most used first).
COMMANDS: dict[str, Spec] = {
    "status": Spec("/status [NAME] - a summary, or one host's card", 0, 1,
                   menu="Summary of your hosts, or one host's card"),
    "hosts": Spec("/hosts - your hosts, online or not", 0, 0, menu="Your hosts, online or offline"),
    "plot": Spec("/plot NAME METRICS SPAN... [LIMIT] [UNIT] - a chart, e.g. /plot box1 cpu;gpu 2d 3h 80", 0, 16,
                 menu="A chart: /plot NAME METRICS SPAN [LIMIT] [UNIT]"),
    "newkey": Spec("/newkey NAME - register a host and get its agent settings", 1, 1,
                   menu="Register a host: /newkey NAME"),
    "agent": Spec("/agent - the agent file, to copy to a host", 0, 0, menu="The agent file to run on a host"),
    "rename": Spec("/rename OLD NEW - rename a host", 2, 2, menu="Rename a host: /rename OLD NEW"),
    "rotate": Spec("/rotate NAME - issue a new secret; the old one stops working at once", 1, 1,
                   menu="New secret for a host: /rotate NAME"),
    "revoke": Spec("/revoke NAME - delete a host's key and disconnect its agent", 1, 1,
                   menu="Delete a host's key: /revoke NAME"),
    "alerts": Spec("/alerts - your alert rules and their state", 0, 0, menu="Your alert rules and their state"),
    # The alert commands check their own arguments (mbot.alerts), with more to say than an argument count.
    "setalert": Spec("/setalert NAME METRIC THRESHOLD [FOR] - alert when a metric crosses a threshold", 0, 8,
                     menu="Alert: /setalert NAME METRIC THRESHOLD [FOR]"),
    "delalert": Spec("/delalert NAME METRIC - remove an alert", 0, 8, menu="Remove an alert: /delalert NAME METRIC"),
    "mute": Spec("/mute NAME DURATION - no notifications from a host for a while", 0, 8,
                 menu="Silence a host: /mute NAME DURATION"),
    "unmute": Spec("/unmute NAME - notifications back on", 0, 8, menu="Notifications back on: /unmute NAME"),
    # Not in the menu: the menu is the same for every user.
    "invite": Spec("/invite - a one-time link that lets one more person use this bot (admin only)", 0, 0, admin=True),
    # /help is the list itself (so not in it), but in the menu: it is where a new user looks first.
    "help": Spec("/help", 0, 0, menu="What mbot can do", in_help=False),
    # /start CODE is what a t.me/<bot>?start=CODE invite link makes Telegram send (mbot.users), and what opening
    # the bot sends: neither listed nor in the menu.
    "start": Spec("/start", 0, 1, in_help=False),
}

# What the command menu (setMyCommands) shows.
MENU: list[tuple[str, str]] = [(name, spec.menu) for name, spec in COMMANDS.items() if spec.menu]


def help_lines(admin: bool = False) -> list[str]:
    """The usage lines /help lists, in the table's order: a new command cannot be left out."""
    return [spec.usage for spec in COMMANDS.values() if spec.in_help and (admin or not spec.admin)]


# The table in its earlier shapes, for views.help_text and tests/test_access.py until they read COMMANDS or
# help_lines: name -> (usage, min args, max args), and the names left out of /help or shown to admins only.
SPECS: dict[str, tuple[str, int, int]] = {name: (spec.usage, spec.low, spec.high) for name, spec in COMMANDS.items()}
NOT_IN_HELP = tuple(name for name, spec in COMMANDS.items() if not spec.in_help)
ADMIN_ONLY = tuple(name for name, spec in COMMANDS.items() if spec.admin)


def usage(name: str) -> str:
    return f"Usage: {COMMANDS[name].usage}"


def parse(text: str, bot_username: str | None = None) -> Command | None:
    """A command, or None when the text is not a command at all (plain chat is ignored)."""
    words = text.split()
    if not words or not words[0].startswith("/") or len(words[0]) == 1:
        return None
    name, _, addressed_to = words[0][1:].partition("@")
    if addressed_to and bot_username and addressed_to.lower() != bot_username.lower():
        return None  # a command for another bot in a group
    name = name.lower()
    if name not in COMMANDS:
        raise UsageError(f"Unknown command /{name[:32]}. /help lists what I understand.")
    spec = COMMANDS[name]
    args = tuple(words[1:])
    if not spec.low <= len(args) <= spec.high:
        raise UsageError(usage(name))
    return Command(name, args)
