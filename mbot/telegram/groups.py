"""The bot in groups: who may act on a host there, where a host's alerts go, when a group is gone. Pure.

A command or button in a group is always checked against the member who sent or pressed it (message.from,
callback_query.from), never against the chat: being in a group where a host is bound gives nothing. `may_act` is
the one rule for that (today: the host's owner), used for /bind, /unbind, /statuspage and the buttons of alerts
delivered to a group, so that per-host roles can replace it in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeGuard

from .. import access
from ..model import Binding, Host
from .commands import COMMANDS

# Telegram answers a send to a group the bot is no longer in with 403 ("bot was kicked from the group chat", "bot
# is not a member of the supergroup chat"), or 400 "chat not found" for a group that was deleted.
GONE_400 = ("chat not found", "group chat was deactivated", "upgraded to a supergroup")
# Bounds a user's reach into groups: hosts bound to one chat, and chats one host goes to.
MAX_BINDINGS_PER_CHAT = 50
MAX_CHATS_PER_HOST = 10


@dataclass(frozen=True)
class Dest:
    """One chat an alert goes to: the owner's private chat, or a group (in a forum topic: thread_id)."""

    chat_id: int
    thread_id: int | None = None
    silent: bool = False  # without a sound (the owner's quiet hours, in their own chat)
    role: str = access.OWNER  # mbot.access: the buttons its copy gets (in a group: checked again at each press)


def may_act(user_id: int, host: Host) -> bool:
    """Whether `user_id` may act on `host` from a group (bind it, stop its page, press its alert buttons)."""
    return host.owner == user_id


def receivers(owner: int, silent: bool, bindings: Sequence[Binding]) -> list[Dest]:
    """Where a host's alert goes: its owner's chat first, then each group it is bound to (its topic). A binding
    counts only while the user who made it still owns the host: a host given to someone else (the server's own
    host adopted by the admin) does not keep reporting to the groups of its former owner."""
    dests = [Dest(owner, None, silent)]
    dests += [Dest(b.chat_id, b.thread_id) for b in bindings if b.bound_by == owner and b.chat_id != owner]
    return dests


def chat_is_gone(error_code: int, description: str) -> bool:
    """Whether Telegram's refusal means the bot is not in that group any more (sending again cannot work)."""
    text = description.lower()
    return error_code == 403 or (error_code == 400 and any(phrase in text for phrase in GONE_400))


def topic_of(message: dict[str, Any]) -> int | None:
    """The forum topic a message was posted in (hostile JSON): replies go there too. Plain groups and a forum's
    General topic: None."""
    thread = message.get("message_thread_id")
    if message.get("is_topic_message") is True and isinstance(thread, int) and not isinstance(thread, bool) \
            and 0 < thread < 2 ** 31:
        return thread
    return None


def channel_ref(word: str) -> int | str | None:
    """A channel (or group) named in a private chat: @username or its numeric id (-100...); None if `word` is
    neither (a host name, say)."""
    if len(word) > 1 and word.startswith("@") and word[1:].replace("_", "").isalnum() and len(word) <= 33:
        return word
    if word.startswith("-") and word[1:].isdigit() and len(word) <= 20:
        return int(word)
    return None


def is_admin(member: object) -> bool:
    """Whether getChatMember's answer (hostile JSON) says the user administers that chat."""
    return isinstance(member, dict) and member.get("status") in ("creator", "administrator")


def ours(text: str, bot_username: str | None) -> bool:
    """Whether a command in a group is for this bot: addressed to it (/cmd@bot), or one it knows. Several bots may
    share a group, and each gets every /command: an unknown one is someone else's, not a mistake to answer."""
    head = text.split(maxsplit=1)[0] if text.split() else ""
    name, _, addressed = head[1:].partition("@")
    if addressed:
        return bot_username is not None and addressed.lower() == bot_username.lower()
    return name.lower() in COMMANDS


def migrated(message: dict[str, Any]) -> tuple[int, int] | None:
    """(old, new) chat id when this service message says a group became a supergroup (as it does when its forum
    topics are turned on): Telegram gives it a new id, and the old one refuses every send from then on."""
    chat = message.get("chat")
    old, new = chat.get("id") if isinstance(chat, dict) else None, message.get("migrate_to_chat_id")
    if _group_id(old) and _group_id(new) and old != new:
        return old, new
    return None


def _group_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value < 0


def left(update: object) -> int | None:
    """The chat of a my_chat_member update (hostile JSON) that says the bot left it or was removed from it."""
    if not isinstance(update, dict):
        return None
    chat, member = update.get("chat"), update.get("new_chat_member")
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    status = member.get("status") if isinstance(member, dict) else None
    return chat_id if status in ("left", "kicked") and _group_id(chat_id) else None
