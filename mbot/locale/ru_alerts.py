"""Russian: alerts as chat text (telegram/alert_text.py), the alert commands' errors (telegram/alert_commands.py), and
issue 16's later items (storms folded, flapping, disk forecasts, the daily digest)."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # alert_text.py
    "restarting over and over": "перезапускается снова и снова",
    "not reported (removed?)": "пропал из отчёта (удалён?)",
    "{n} day": ("{n} день", "{n} дня", "{n} дней"),
    "{days} days": "{days} дня",
    "threshold below {value}": "порог: ниже {value}",
    "threshold {value}": "порог {value}",
    "{label} is down: {value}": "{label}: сбой ({value})",
    "{label} is {value}": "{label}: {value}",
    "your host came back": "ваш хост вернулся",
    "all {n} hosts came back": ("вернулся {n} хост", "вернулись все {n} хоста", "вернулись все {n} хостов"),
    "{name} did not come back": "{name} не вернулся",
    "none of your {n} hosts came back: {names}": ("не вернулся ни один из {n} хоста: {names}",
                                                  "не вернулся ни один из {n} хостов: {names}",
                                                  "не вернулся ни один из {n} хостов: {names}"),
    "{n} host came back, {missing} did not: {names}": ("вернулся {n} хост, не вернулись ({missing}): {names}",
                                                       "вернулись {n} хоста, не вернулись ({missing}): {names}",
                                                       "вернулись {n} хостов, не вернулись ({missing}): {names}"),
    "mbot was down {span} ({duration}); {news}": "mbot не работал {span} ({duration}); {news}",
    "{host}: {label} is no longer reported; alert closed after {duration}":
        "{host}: {label} больше не приходит; тревога закрыта через {duration}",
    "{host}: {label} is {value} again after {duration}": "{host}: {label} снова {value} (длилось {duration})",
    "{host}: {label} back to normal ({value}) after {duration}":
        "{host}: {label} в норме ({value}), длилось {duration}",
    "{host}: {label} still down ({value}) after {duration}":
        "{host}: {label} всё ещё не работает ({value}), уже {duration}",
    "{host}: {label} still {value} after {duration}": "{host}: {label} всё ещё {value}, уже {duration}",
    "{host} is offline (last seen {duration} ago)": "{host} пропал со связи (последний раз на связи {duration} назад)",
    "{host} is back online after {duration}": "{host} снова на связи (не было {duration})",
    "{host} is back after {duration}": "{host} вернулся через {duration}",
    "{host} is back, {duration} after its shutdown from the chat":
        "{host} вернулся, через {duration} после выключения из чата",
    "(booted {when})": "(загружен в {when})",
    "{host} is not back {duration} after its reboot (last seen {ago} ago)":
        "{host} не вернулся за {duration} после перезагрузки (последний раз на связи {ago} назад)",
    "{host}: notifications are back on.": "{host}: уведомления снова включены.",
    "It is offline (last seen {duration} ago).": "Хост не на связи (последний раз на связи {duration} назад).",
    "Still firing:": "Всё ещё горят:",
    "Nothing is firing.": "Ничего не горит.",
    "{host} came back online while muted": "{host} вернулся на связь, пока уведомления были выключены",
    "{host}: {label} back to normal while muted": "{host}: {label} в норме (пока уведомления были выключены)",
    "{host} was offline for {duration}; back online": "{host} был не на связи {duration}; снова на связи",
    "worst {value}": "худшее {value}",
    "{n} container down": ("{n} контейнер не работает", "{n} контейнера не работают", "{n} контейнеров не работают"),
    "{n} member down": ("{n} объект не работает", "{n} объекта не работают", "{n} объектов не работают"),
    "{n} container up again": ("{n} контейнер снова работает", "{n} контейнера снова работают",
                               "{n} контейнеров снова работают"),
    "{n} member up again": ("{n} объект снова работает", "{n} объекта снова работают", "{n} объектов снова работают"),
    "{n} container still down": ("{n} контейнер всё ещё не работает", "{n} контейнера всё ещё не работают",
                                 "{n} контейнеров всё ещё не работают"),
    "{n} member still down": ("{n} объект всё ещё не работает", "{n} объекта всё ещё не работают",
                              "{n} объектов всё ещё не работают"),
    "({n} times in all)": ("(всего {n} раз)", "(всего {n} раза)", "(всего {n} раз)"),
    # alert_commands.py
    "durations look like 30s, 5m, 2h, 1d or 1h30m": "длительность пишется как 30s, 5m, 2h, 1d или 1h30m",
    "METRIC: {words}, or offline (containers, services and checks: THRESHOLD is the word down)":
        "METRIC: {words} или offline (для контейнеров, служб и проверок THRESHOLD — слово down)",
    "{what} {text!r} is not a duration: {help}.": "{what} {text!r} — не длительность: {help}.",
    "{what} must be between {low} and {high}.": "{what} должно быть от {low} до {high}.",
    "unknown metric {text!r}. {help}.": "неизвестная метрика {text!r}. {help}.",
    "{metric} takes no threshold but `down`, e.g. /setalert box1 {metric} down.":
        "у {metric} нет порога, только `down`, например /setalert box1 {metric} down.",
    "90, 90% or <10": "90, 90% или <10",
    "80 or 80C": "80 или 80C",
    "4 or 4.5": "4 или 4.5",
    "10M or <1K (bytes/s)": "10M или <1K (байт/с)",
    "200, 200ms or 1s": "200, 200ms или 1s",
    "THRESHOLD {text!r} is not valid for {metric}: try {examples}.":
        "THRESHOLD {text!r} не подходит для {metric}: например {examples}.",
    "THRESHOLD for {metric} must be between {low} and {high}.": "THRESHOLD для {metric} — от {low} до {high}.",
    "{help}; e.g. /setalert box1 cpu 90 5m or /setalert box1 offline 2m.":
        "{help}; например /setalert box1 cpu 90 5m или /setalert box1 offline 2m.",
    "offline takes one DELAY at most, e.g. /setalert box1 offline 2m.":
        "у offline не больше одного DELAY, например /setalert box1 offline 2m.",
    "THRESHOLD is missing, e.g. /setalert {name} {metric} 90 5m.":
        "не указан THRESHOLD, например /setalert {name} {metric} 90 5m.",
    "too many arguments.": "слишком много аргументов.",
    "e.g. /setalert {name} {metric} down, or down 2m to let a restart pass.":
        "например /setalert {name} {metric} down, или down 2m, чтобы пропустить перезапуск.",
    "{metric} takes the word down (and an optional FOR): {example}":
        "{metric} принимает слово down (и, по желанию, FOR): {example}",
    "too many arguments: {example}": "слишком много аргументов: {example}",
    "{help}; /alerts lists your rules.": "{help}; /alerts покажет ваши правила.",
    "e.g. /mute box1 2h; {help}.": "например /mute box1 2h; {help}.",
    "e.g. /unmute box1.": "например /unmute box1.",
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
    "a daily picture of your hosts' last 24 h at this time (MBOT_TZ)":
        "ежедневная картинка последних 24 ч ваших хостов в это время (MBOT_TZ)",
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
