"""The message catalogue: every id the code uses is translated, with the same fields; language choice; plurals."""
from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest

from mbot import i18n, series
from mbot.i18n import _, n_

SOURCE = Path(i18n.__file__).parent


def used_ids() -> list[tuple[str, str]]:
    """(file, msgid) for every _("..."), n_("...", "...", n) and N_("...") with a literal id in mbot/ (an n_'s
    plural is not an id: its translations are stored under the singular), and every text of the metric
    catalogue's rows (said through _() by series.Metric.text and the card's buttons)."""
    found = [found for path in sorted(SOURCE.rglob("*.py")) for found in literal_ids(path)]
    for row in series.CATALOGUE:
        found += [("series.py", text) for text in (row.label, row.legend, row.button, row.named) if text]
    return found


def literal_ids(path: Path) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "n_", "N_")
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((path.name, node.args[0].value))
    return found


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_message_the_code_sends_has_a_russian_translation_with_the_same_fields() -> None:
    ru = i18n.catalogue("ru")
    missing, wrong = [], []
    for file, msgid in used_ids():
        if msgid not in ru:
            missing.append(f"{file}: {msgid!r}")
            continue
        translations = ru[msgid] if isinstance(ru[msgid], tuple) else (ru[msgid],)
        for text in translations:
            if fields(text) - fields(msgid) - {"n"}:
                wrong.append(f"{file}: {msgid!r} -> {text!r}")
    assert not missing, "untranslated:\n" + "\n".join(missing)
    assert not wrong, "translation uses fields the id lacks:\n" + "\n".join(wrong)


@pytest.mark.parametrize("code, language", [
    ("ru", "ru"), ("ru-RU", "ru"), ("RU", "ru"), ("en-GB", "en"), ("de", "en"), (None, "en"), (7, "en"),
    ("", "en"), ("x" * 10_000, "en"),
])
def test_telegram_language_code_chooses_a_language_we_speak(code: object, language: str) -> None:
    assert i18n.language_of(code) == language


def test_the_language_holds_inside_speaking_only() -> None:
    assert _("{n} host", n=1) == "{n} host".format(n=1)
    with i18n.speaking("ru"):
        assert [n_("{n} host", "{n} hosts", n) for n in (1, 3, 5, 11, 21, 22, 112)] == [
            "1 хост", "3 хоста", "5 хостов", "11 хостов", "21 хост", "22 хоста", "112 хостов"]
        assert i18n.number(12.54) == "12,5"
    assert n_("{n} host", "{n} hosts", 5) == "5 hosts"
    assert i18n.number(12.54) == "12.5"
    with i18n.speaking("klingon"):
        assert i18n.current() == "en"


def test_every_russian_entry_is_a_message_the_code_sends() -> None:
    """A translation nothing uses any more (its English changed, or the text went) is dead weight that misleads
    the next translator: it fails here. (This file's own examples count as used: they test the machinery.)"""
    used = {msgid for _, msgid in used_ids()} | {msgid for _, msgid in literal_ids(Path(__file__))}
    dead = sorted(set(i18n.catalogue("ru")) - used)
    assert not dead, "translated but never used:\n" + "\n".join(map(repr, dead))


def test_a_users_language_is_their_choice_else_telegrams_else_english_and_costs_a_write_only_when_it_changes():
    from mbot.telegram.languages import Languages

    languages = Languages({1: ("ru", "en"), 2: ("xx", "ru"), 3: (None, "klingon")})  # stored rows, one stale
    assert [languages.of(user) for user in (1, 2, 3, 4)] == ["ru", "ru", "en", "en"]
    assert languages.seen(4, "ru-RU") == (None, "ru") and languages.of(4) == "ru"
    assert languages.seen(4, "ru") is None  # the same again: nothing to store
    assert languages.seen(4, None) is None and languages.of(4) == "ru"  # Telegram left it out: no news
    assert languages.seen(4, {"x": 1}) == (None, "en") and languages.of(4) == "en"  # hostile: English
    assert languages.seen(4, "ru") == (None, "ru")
    assert languages.choose(4, "en") == ("en", "ru") and languages.of(4) == "en"  # /lang en wins over Telegram's
    assert languages.seen(4, "ru") is None and languages.of(4) == "en"
    assert languages.choose(4, None) == (None, "ru") and languages.of(4) == "ru"  # /lang auto
