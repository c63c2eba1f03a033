"""Translations of the chat's messages: modules <language>_<area>.py, each a dict named after the language
(RU = {english id: translation}). See mbot/i18n.py."""
