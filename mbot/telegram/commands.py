"""Chat text -> Command values. Pure: no IO, no database; unit-tested line by line.

A bad command never yields silence: it raises UsageError carrying the usage line of that command (or, for an unknown
command, a pointer to /help), which the bot sends back as is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..i18n import N_, _


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
    about: str  # what it does, a phrase in lower case: "rename a host" (a message id: shown in the user's language)
    low: int  # fewest arguments
    high: int  # most arguments
    example: str = ""  # in the usage line and /help, not in the menu (where it would crowd out the rest)
    menu: bool = True  # in the command menu (setMyCommands), which is the same for every user
    in_help: bool = True
    admin: bool = False  # listed in /help for admins only (the command checks the user itself)
    # NAME (its first argument) may be left out in a chat where the user chose a default host (/set NAME): the bot
    # puts the default in when the first argument is missing or names none of the user's hosts.
    default_host: bool = False

    @property
    def syntax(self) -> str:
        return f"/{self.name} {self.args}".rstrip()

    @property
    def usage(self) -> str:
        """The usage line a user sees after a mistake, and the command's line in /help."""
        text = f"{self.syntax} - {_(self.about)}" if self.about else self.syntax
        return _("{text}, e.g. {example}", text=text, example=self.example) if self.example else text

    @property
    def menu_text(self) -> str:
        about = _(self.about)
        about = about[:1].upper() + about[1:]
        return f"{about}: {self.syntax}" if self.args else about


# THE table of commands, in the order /help and the menu list them (most used first).
TABLE: tuple[Spec, ...] = (
    Spec("status", "[NAME]", N_("a summary of your hosts, or one host's card"), 0, 1, default_host=True),
    Spec("hosts", "", N_("your hosts, online or not"), 0, 0),
    Spec("plot", "NAME METRICS SPAN... [LIMIT] [UNIT]", N_("a chart"), 0, 16, example="/plot box1 cpu;gpu 2d 3h 80",
         default_host=True),
    Spec("top", "NAME", N_("a host's top processes by CPU, memory and VRAM"), 1, 1, default_host=True),
    Spec("info", "NAME", N_("what a host is: CPU, memory, disks, network, GPUs, OS"), 1, 1, example="/info box1",
         default_host=True),
    Spec("containers", "NAME", N_("a host's containers: state, health, restarts, CPU, memory"), 1, 1, default_host=True),
    Spec("set", "[NAME | off]", N_("this chat's default host: commands then work without NAME"), 0, 1),
    Spec("newkey", "NAME", N_("register a host and get its agent settings"), 1, 1),
    Spec("agent", "", N_("the agent file, to copy to a host"), 0, 0),
    Spec("rename", "OLD NEW", N_("rename a host"), 2, 2),
    Spec("rotate", "NAME", N_("issue a new secret; the old one stops working at once"), 1, 1),
    Spec("revoke", "NAME", N_("delete a host's key and disconnect its agent"), 1, 1),
    Spec("share", "NAME [viewer|operator]", N_("a one-time link that shares a host with one person"), 1, 2,
         example="/share box1 viewer"),
    Spec("shares", "NAME", N_("who a host is shared with, and a button to remove each"), 1, 1),
    Spec("unshare", "NAME USER", N_("take a person's access to a host away"), 2, 2),
    # The stability test checks its own arguments (mbot.stability): bounds with more to say than a count.
    Spec("stability", "NAME [INTERVAL] [DURATION]", N_("RTT and loss of the link to a host, probed every INTERVAL"), 0, 8,
         example="/stability box1 10ms 2m", default_host=True),
    Spec("speedtest", "NAME", N_("throughput between a host and this server, both ways (about 20 s)"), 1, 1,
         default_host=True),
    # /check checks its own arguments (mbot.checks): a URL, a duration and bounds have more to say than a count.
    Spec("check", "NAME URL|tcp://HOST:PORT [EVERY]", N_("probe a target from a host (alerts when it is down)"), 0, 8,
         example="/check box1 https://example.com 5m", default_host=True),
    Spec("checks", "NAME", N_("a host's checks and their state"), 1, 1, default_host=True),
    Spec("alerts", "", N_("your alert rules and their state"), 0, 0),
    # The alert commands check their own arguments (mbot.alerts), with more to say than an argument count.
    Spec("setalert", "NAME METRIC THRESHOLD [FOR]", N_("alert when a metric crosses a threshold"), 0, 8,
         default_host=True),
    Spec("delalert", "NAME METRIC", N_("remove an alert"), 0, 8, default_host=True),
    Spec("mute", "NAME DURATION", N_("no notifications from a host for a while"), 0, 8, default_host=True),
    Spec("unmute", "NAME", N_("notifications back on"), 0, 8, default_host=True),
    # mbot.quiet checks the window itself.
    Spec("quiet", "[HH:MM-HH:MM | off]", N_("silent notifications in these hours (MBOT_TZ)"), 0, 3,
         example="/quiet 23:00-07:00"),
    # mbot.digest checks the time itself.
    Spec("digest", "[HH:MM | off]", N_("a daily picture of your hosts' last 24 h at this time (MBOT_TZ)"), 0, 3,
         example="/digest 09:00"),
    # Groups (mbot/telegram/groups.py): used in the group itself; each checks the member who sent it.
    Spec("bind", "[NAME]", N_("in a group: send a host's alerts there too (no NAME: what is bound here)"), 0, 1,
         example="/bind box1"),
    Spec("unbind", "NAME", N_("in a group: stop sending a host's alerts there"), 1, 1),
    Spec("statuspage", "[@CHANNEL] [NAME ...] | off",
         N_("one message that keeps your hosts' state current, in this group or a channel you administer"), 0, 31,
         example="/statuspage box1 box2"),
    Spec("lang", "[en | ru | auto]", N_("the chat's language (auto: your Telegram's)"), 0, 1, example="/lang ru"),
    Spec("invite", "", N_("a one-time link that lets one more person use this bot (admin only)"), 0, 0, menu=False,
         admin=True),
    # /help is the list itself (so not in it), but in the menu: it is where a new user looks first.
    Spec("help", "", N_("what mbot can do"), 0, 0, in_help=False),
    # /start CODE is what a t.me/<bot>?start=CODE invite link makes Telegram send (mbot.users), and what opening
    # the bot sends: neither listed nor in the menu.
    Spec("start", "", "", 0, 1, menu=False, in_help=False),
    # The original's /linkkey made a secret's holder a co-owner; it now explains /share. Not listed.
    Spec("linkkey", "", "", 0, 8, menu=False, in_help=False),
)
COMMANDS: dict[str, Spec] = {spec.name: spec for spec in TABLE}
# The original's names for commands that exist here under another name: they work, and /help mentions them.
ALIASES: dict[str, str] = {"list": "hosts", "renamekey": "rename", "delkey": "revoke"}


def menu() -> list[tuple[str, str]]:
    """What the command menu (setMyCommands) shows, in the current language (mbot.i18n)."""
    return [(spec.name, spec.menu_text) for spec in TABLE if spec.menu]


MENU = menu()  # in English


def help_lines(admin: bool = False) -> list[str]:
    """The usage lines /help lists, in the table's order: a new command cannot be left out."""
    return [spec.usage for spec in TABLE if spec.in_help and (admin or not spec.admin)]


# The table in its earlier shapes, for views.help_text and tests/test_access.py until they read COMMANDS or
# help_lines: name -> (usage, min args, max args), and the names left out of /help or shown to admins only.
SPECS: dict[str, tuple[str, int, int]] = {spec.name: (spec.usage, spec.low, spec.high) for spec in TABLE}
NOT_IN_HELP = tuple(spec.name for spec in TABLE if not spec.in_help)
ADMIN_ONLY = tuple(spec.name for spec in TABLE if spec.admin)


def usage(name: str) -> str:
    return _("Usage: {usage}", usage=COMMANDS[name].usage)


def parse(text: str, bot_username: str | None = None) -> Command | None:
    """A command, or None when the text is not a command at all (plain chat is ignored)."""
    words = text.split()
    if not words or not words[0].startswith("/") or len(words[0]) == 1:
        return None
    name, _at, addressed_to = words[0][1:].partition("@")
    if addressed_to and bot_username and addressed_to.lower() != bot_username.lower():
        return None  # a command for another bot in a group
    name = name.lower()
    name = ALIASES.get(name, name)
    if name not in COMMANDS:
        raise UsageError(_("Unknown command /{name}. /help lists what I understand.", name=name[:32]))
    spec = COMMANDS[name]
    args = tuple(words[1:])
    # A command whose NAME may come from /set has one argument fewer: the bot adds the default or says the usage.
    low = spec.low - 1 if spec.default_host and spec.low else spec.low
    if not low <= len(args) <= spec.high:
        raise UsageError(usage(name))
    return Command(name, args)
