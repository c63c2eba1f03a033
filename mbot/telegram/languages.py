"""Which language each user reads (mbot.i18n): their /lang choice, else the language_code Telegram last sent with
their updates, else English. Pure bookkeeping; the bot loads it from and writes it to `user_languages`.

Messages that answer no update (alerts, reminders, notices) need a user's language without an update at hand:
that is why the last seen language_code is kept, not only the choice.
"""
from __future__ import annotations

from .. import i18n


class Languages:
    def __init__(self, rows: dict[int, tuple[str | None, str | None]] | None = None) -> None:
        self._rows: dict[int, tuple[str | None, str | None]] = {}
        self.load(rows or {})

    def load(self, rows: dict[int, tuple[str | None, str | None]]) -> None:
        """The stored rows (`user_languages`); a value no longer in i18n.LANGUAGES reads as unknown."""
        self._rows = {user: (chosen if chosen in i18n.LANGUAGES else None, seen if seen in i18n.LANGUAGES else None)
                      for user, (chosen, seen) in rows.items()}

    def of(self, user_id: int) -> str:
        """The language to speak to `user_id` in."""
        chosen, seen = self._rows.get(user_id, (None, None))
        return chosen or seen or i18n.DEFAULT

    def chosen(self, user_id: int) -> str | None:
        return self._rows.get(user_id, (None, None))[0]

    def seen(self, user_id: int, language_code: object) -> tuple[str | None, str | None] | None:
        """An update from `user_id` carried `language_code` (hostile: any JSON value; absent is None). Returns the
        row to store when it changed what we know, else None: a user's every message costs no write."""
        if language_code is None:
            return None  # Telegram leaves it out now and then: that says nothing
        chosen, seen = self._rows.get(user_id, (None, None))
        language = i18n.language_of(language_code)
        if language == seen:
            return None
        self._rows[user_id] = (chosen, language)
        return chosen, language

    def choose(self, user_id: int, language: str | None) -> tuple[str | None, str | None]:
        """/lang LANGUAGE (None: follow Telegram again); returns the row to store."""
        _, seen = self._rows.get(user_id, (None, None))
        self._rows[user_id] = (language, seen)
        return language, seen
