"""Russian: alert texts written for issue 16's later items (storms folded, disk forecasts, the daily digest)."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # mbot/telegram/alert_fold.py
    "⚠️ {n} of {total} hosts lost contact at {time}: probably the server's network or the server itself":
        "⚠️ {n} из {total} хостов потеряли связь в {time}: вероятно, дело в сети сервера или в самом сервере",
    "⚠️ {n} alert at {time}": ("⚠️ {n} оповещение в {time}", "⚠️ {n} оповещения в {time}",
                               "⚠️ {n} оповещений в {time}"),
    "… and {n} more": "… и ещё {n}",
}
