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
    # mbot/forecast.py
    # ("in {when}": the Russian templates leave out "через", which these carry)
    "about {n} day": ("примерно через {n} день", "примерно через {n} дня", "примерно через {n} дней"),
    "about {n} hour": ("примерно через {n} час", "примерно через {n} часа", "примерно через {n} часов"),
    "about {n} minute": ("примерно через {n} минуту", "примерно через {n} минуты", "примерно через {n} минут"),
    "{mount} on {host} is full at the current rate": "{mount} на {host} заполнен при текущем темпе",
    "{mount} on {host} will be full in {when} at the current rate":
        "{mount} на {host} заполнится {when} при текущем темпе",
    "{mount} on {host} is no longer filling up at that rate: the disk-full forecast is over":
        "{mount} на {host} больше не заполняется так быстро: прогноз заполнения снят",
    "{mount} on {host} is filling up more slowly: now full in {when}":
        "{mount} на {host} заполняется медленнее: теперь заполнится {when}",
    "⏳ {mount} full in {when} at the current rate": "⏳ {mount} заполнится {when} при текущем темпе",
}
