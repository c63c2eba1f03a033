"""Russian: texts of the i18n machinery itself and its tests' examples."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    "{n} host": ("{n} хост", "{n} хоста", "{n} хостов"),
}
