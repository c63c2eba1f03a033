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
    """One command: everything the parser, the usage lines, /help and the command menu know about it."""

    name: str
    args: str  # its syntax after the command: "OLD NEW", "[NAME]"
    about: str  # what it does, a phrase in lower case: "rename a host"
    low: int  # fewest arguments
    high: int  # most arguments
    example: str = ""  # in the usage line and /help, not in the menu (where it would crowd out the rest)
    menu: bool = True  # in the command menu (setMyCommands), which is the same for every user
    in_help: bool = True
    admin: bool = False  # listed in /help for admins only (the command checks the user itself)

    @property
    def syntax(self) -> str:
        return f"/{self.name} {self.args}".rstrip()

    @property
    def usage(self) -> str:
        """The usage line a user sees after a mistake, and the command's line in /help."""
        text = f"{self.syntax} - {self.about}" if self.about else self.syntax
        return f"{text}, e.g. {self.example}" if self.example else text

    @property
    def menu_text(self) -> str:
        about = self.about[:1].upper() + self.about[1:]
        return f"{about}: {self.syntax}" if self.args else about


# THE table of commands, in the order /help and the menu list them (most used first).
TABLE: tuple[Spec, ...] = (
    Spec("status", "[NAME]", "a summary of your hosts, or one host's card", 0, 1),
    Spec("hosts", "", "your hosts, online or not", 0, 0),
    Spec("plot", "NAME METRICS SPAN... [LIMIT] [UNIT]", "a chart", 0, 16, example="/plot box1 cpu;gpu 2d 3h 80"),
    Spec("top", "NAME", "a host's top processes by CPU, memory and VRAM", 1, 1),
    Spec("info", "NAME", "what a host is: CPU, memory, disks, network, GPUs, OS", 1, 1, example="/info box1"),
    Spec("containers", "NAME", "a host's containers: state, health, restarts, CPU, memory", 1, 1),
    Spec("newkey", "NAME", "register a host and get its agent settings", 1, 1),
    Spec("agent", "", "the agent file, to copy to a host", 0, 0),
    Spec("rename", "OLD NEW", "rename a host", 2, 2),
    Spec("rotate", "NAME", "issue a new secret; the old one stops working at once", 1, 1),
    Spec("revoke", "NAME", "delete a host's key and disconnect its agent", 1, 1),
    # The stability test checks its own arguments (mbot.stability): bounds with more to say than a count.
    Spec("stability", "NAME [INTERVAL] [DURATION]", "RTT and loss of the link to a host, probed every INTERVAL", 0, 8,
         example="/stability box1 10ms 2m"),
    Spec("speedtest", "NAME", "throughput between a host and this server, both ways (about 20 s)", 1, 1),
    # /check checks its own arguments (mbot.checks): a URL, a duration and bounds have more to say than a count.
    Spec("check", "NAME URL|tcp://HOST:PORT [EVERY]", "probe a target from a host (alerts when it is down)", 0, 8,
         example="/check box1 https://example.com 5m"),
    Spec("checks", "NAME", "a host's checks and their state", 1, 1),
    Spec("alerts", "", "your alert rules and their state", 0, 0),
    # The alert commands check their own arguments (mbot.alerts), with more to say than an argument count.
    Spec("setalert", "NAME METRIC THRESHOLD [FOR]", "alert when a metric crosses a threshold", 0, 8),
    Spec("delalert", "NAME METRIC", "remove an alert", 0, 8),
    Spec("mute", "NAME DURATION", "no notifications from a host for a while", 0, 8),
    Spec("unmute", "NAME", "notifications back on", 0, 8),
    # mbot.quiet checks the window itself.
    Spec("quiet", "[HH:MM-HH:MM | off]", "silent notifications in these hours (MBOT_TZ)", 0, 3,
         example="/quiet 23:00-07:00"),
    # mbot.digest checks the time itself.
    Spec("digest", "[HH:MM | off]", "a daily picture of your hosts' last 24 h at this time (MBOT_TZ)", 0, 3,
         example="/digest 09:00"),
    Spec("invite", "", "a one-time link that lets one more person use this bot (admin only)", 0, 0, menu=False,
         admin=True),
    # /help is the list itself (so not in it), but in the menu: it is where a new user looks first.
    Spec("help", "", "what mbot can do", 0, 0, in_help=False),
    # /start CODE is what a t.me/<bot>?start=CODE invite link makes Telegram send (mbot.users), and what opening
    # the bot sends: neither listed nor in the menu.
    Spec("start", "", "", 0, 1, menu=False, in_help=False),
)
COMMANDS: dict[str, Spec] = {spec.name: spec for spec in TABLE}

# What the command menu (setMyCommands) shows.
MENU: list[tuple[str, str]] = [(spec.name, spec.menu_text) for spec in TABLE if spec.menu]


def help_lines(admin: bool = False) -> list[str]:
    """The usage lines /help lists, in the table's order: a new command cannot be left out."""
    return [spec.usage for spec in TABLE if spec.in_help and (admin or not spec.admin)]


# The table in its earlier shapes, for views.help_text and tests/test_access.py until they read COMMANDS or
# help_lines: name -> (usage, min args, max args), and the names left out of /help or shown to admins only.
SPECS: dict[str, tuple[str, int, int]] = {spec.name: (spec.usage, spec.low, spec.high) for spec in TABLE}
NOT_IN_HELP = tuple(spec.name for spec in TABLE if not spec.in_help)
ADMIN_ONLY = tuple(spec.name for spec in TABLE if spec.admin)


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
