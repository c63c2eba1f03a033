"""mbot.telegram.commands: /help and the command menu come from one table."""
from __future__ import annotations

import re

from mbot.telegram import commands
from mbot.telegram.commands import COMMANDS


def test_menu_is_made_from_the_table():
    assert commands.MENU == [(spec.name, spec.menu_text) for spec in commands.TABLE if spec.menu]
    assert [name for name, _ in commands.MENU][:3] == ["status", "hosts", "plot"]  # the table's order
    assert dict(commands.MENU)["rename"] == "Rename a host: /rename OLD NEW"
    assert commands.usage("rename") == "Usage: /rename OLD NEW - rename a host"


def test_menu_entries_are_what_telegram_accepts():
    # setMyCommands: a command is 1-32 of a-z, 0-9 and _, its description 1-256 characters.
    for name, text in commands.MENU:
        assert re.fullmatch(r"[a-z0-9_]{1,32}", name) and 1 <= len(text) <= 256


def test_every_listed_command_is_in_help_and_in_the_menu():
    lines, menu = commands.help_lines(), dict(commands.MENU)
    for name, spec in COMMANDS.items():
        if spec.in_help and not spec.admin:
            assert any(line.startswith(f"/{name}") for line in lines)
            assert name in menu, f"/{name} is in /help but not in the menu"
    assert not any(line.startswith("/invite") for line in lines)
    assert any(line.startswith("/invite") for line in commands.help_lines(admin=True))
    assert "invite" not in menu  # one menu for every user: admin commands stay out
