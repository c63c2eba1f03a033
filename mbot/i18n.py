"""The chat's languages: every text the bot sends is an English message id looked up in one catalogue.

Pure apart from one context variable. The bot sets the language of the user it is answering (Telegram's
language_code, or what /lang chose) around each update and each delivery with `speaking(lang)`; everything that
runs inside, views and the errors cores raise alike, calls `_()` and gets that language without the language being
threaded through every signature. Outside (the CLI, logs) it stays English.

Message ids are English text with str.format fields: `_("{name} is offline", name=e(host.name))`. Values are
formatted in after the lookup, so a translation may move them; escaping values stays the caller's job, as before.
The Russian texts live in mbot/locale/ru_*.py (one module per area of the bot, each a dict RU), so an area's texts
and their translations change together; tests/test_i18n.py checks every literal id in the source has a translation
with the same fields.
"""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Union

LANGUAGES = ("en", "ru")
DEFAULT = "en"
# Telegram's language_code is an IETF tag ("ru", "ru-RU", "en-GB"); a language we do not speak reads English.
Translation = Union[str, tuple[str, str, str]]  # plain, or the three Russian plural forms (one, few, many)

_current: ContextVar[str] = ContextVar("mbot_language", default=DEFAULT)
_catalogues: dict[str, dict[str, Translation]] = {}


def language_of(language_code: object) -> str:
    """Telegram's language_code (hostile: any JSON value) -> one of LANGUAGES."""
    if isinstance(language_code, str):
        primary = language_code.split("-", 1)[0].strip().lower()
        if primary in LANGUAGES:
            return primary
    return DEFAULT


@contextmanager
def speaking(language: str) -> Iterator[None]:
    """Texts made inside (in this task and the tasks it starts) are in `language`."""
    token = _current.set(language if language in LANGUAGES else DEFAULT)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def catalogue(language: str) -> dict[str, Translation]:
    """Every translation of `language`, merged from mbot/locale/<language>_*.py (loaded once)."""
    if language not in _catalogues:
        from . import locale
        merged: dict[str, Translation] = {}
        for info in sorted(pkgutil.iter_modules(locale.__path__), key=lambda m: m.name):
            if info.name.startswith(language + "_"):
                module = importlib.import_module(f"{locale.__name__}.{info.name}")
                for msgid, text in getattr(module, language.upper()).items():
                    if merged.get(msgid, text) != text:
                        raise ValueError(f"{info.name}: {msgid!r} is translated differently in another module")
                    merged[msgid] = text
        _catalogues[language] = merged
    return _catalogues[language]


def N_(msgid: str, /) -> str:
    """Marks an id that is looked up later (a table's texts, made at import time): returns it unchanged, and
    tests/test_i18n.py checks its translation like any other."""
    return msgid


def _(msgid: str, /, **values: object) -> str:
    """`msgid` in the current language, with `values` formatted in."""
    language = _current.get()
    text = msgid
    if language != DEFAULT:
        found = catalogue(language).get(msgid, msgid)
        text = found if isinstance(found, str) else found[0]
    return text.format(**values) if values else text


def n_(singular: str, plural: str, n: int, /, **values: object) -> str:
    """The form for `n` ("{n} host" / "{n} hosts"); `n` is also a value. Russian has three forms, chosen by the
    usual rule (1, 21 -> one; 2-4, 22-24 -> few; else many), stored under the singular id."""
    language = _current.get()
    text = singular if n == 1 else plural
    if language != DEFAULT:
        found = catalogue(language).get(singular)
        if isinstance(found, tuple):
            text = found[_russian_form(n)]
        elif isinstance(found, str):
            text = found
    return text.format(n=n, **values)


def _russian_form(n: int) -> int:
    n = abs(n)
    if n % 10 == 1 and n % 100 != 11:
        return 0
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return 1
    return 2


def number(value: float, digits: int = 1) -> str:
    """A number to read: '12.5' in English, '12,5' in Russian (thousands unseparated: values here are short)."""
    return decimal(f"{value:.{digits}f}")


def decimal(text: str) -> str:
    """A number already formatted ('0.52', '1.5 GiB') with the language's decimal mark: a comma in Russian."""
    return text.replace(".", ",") if _current.get() == "ru" else text


_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Genitive, as a date reads ("2 дек", "1 мая"); three letters, like the English.
_MONTHS_RU = ("янв", "фев", "мар", "апр", "мая", "июн", "июл", "авг", "сен", "окт", "ноя", "дек")


def day_month(month: int, day: int) -> str:
    """A date without its year: 'Dec 2' in English, '2 дек' in Russian."""
    if _current.get() == "ru":
        return f"{day} {_MONTHS_RU[month - 1]}"
    return f"{_MONTHS_EN[month - 1]} {day}"
