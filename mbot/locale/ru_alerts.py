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
    # mbot/digest.py, mbot/digestchart.py, mbot/telegram/digests.py and /digest in mbot/telegram/bot.py
    "Usage: /digest HH:MM (e.g. /digest 09:00), /digest off, or /digest to see the setting":
        "Использование: /digest ЧЧ:ММ (например, /digest 09:00), /digest off или /digest, чтобы увидеть настройку",
    "{text} is not a time of day.": "{text} — это не время суток.",
    "up {share}": "на связи {share}",
    "new": "новый",
    "{n} alert": ("{n} оповещение", "{n} оповещения", "{n} оповещений"),
    "Daily digest, last 24 h to {time}": "Ежедневная сводка, последние 24 ч до {time}",
    "No hosts yet: /newkey NAME adds one.": "Хостов пока нет: /newkey ИМЯ добавляет хост.",
    "No disk is filling up.": "Ни один диск не заполняется.",
    "CPU, 24 h": "ЦП, 24 ч",
    "RAM, 24 h": "ОЗУ, 24 ч",
    "fullest disk, 24 h": "самый заполненный диск, 24 ч",
    "mbot · last 24 h": "mbot · последние 24 ч",
    "No daily digest. /digest 09:00 sends one every day at 09:00 ({zone}).":
        "Ежедневной сводки нет. /digest 09:00 — сводка каждый день в 09:00 ({zone}).",
    "Daily digest at {time} ({zone}). /digest off stops it.":
        "Ежедневная сводка в {time} ({zone}). /digest off её отключает.",
    "No more daily digests.": "Ежедневные сводки отключены.",
    "A digest of your hosts every day at {time} ({zone}): a picture of their last 24 h, uptime, alerts and disk "
    "forecasts. /digest off stops it.":
        "Сводка по вашим хостам каждый день в {time} ({zone}): картинка за последние 24 ч, время на связи, "
        "оповещения и прогнозы дисков. /digest off её отключает.",
    # /delalert of a firing alert (mbot/telegram/alert_delivery.py)
    "🗑 {host}: {what}: its alert was deleted (/delalert)": "🗑 {host}: {what}: оповещение удалено (/delalert)",
    # mbot/telegram/alert_flap.py's messages (sent by mbot/telegram/alert_delivery.py)
    "🔁 {subject} is flapping: {n} alerts in {window}; quiet until it has been steady for {steady}":
        "🔁 {subject} мигает: оповещений за {window}: {n}; тишина, пока не будет стабильно {steady}",
    "✅ {subject} was flapping ({n} alerts); steady again for {steady}":
        "✅ {subject} мигал (оповещений: {n}); снова стабильно уже {steady}",
    "{subject} is steady again": "{subject} снова стабилен",
    "🔁 {subject} was flapping ({n} alerts) and has now been in trouble for {steady}: see below":
        "🔁 {subject} мигал (оповещений: {n}), а теперь в беде уже {steady}: см. ниже",
}
