"""Russian: the chat's own texts (telegram/views.py, telegram/commands.py, telegram/bot.py)."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # commands.py: the table's phrases (in /help and the command menu), usage
    "a summary of your hosts, or one host's card": "сводка по вашим хостам или карточка одного хоста",
    "your hosts, online or not": "ваши хосты, на связи и нет",
    "a chart": "график",
    "a host's top processes by CPU, memory and VRAM": "топ процессов хоста по CPU, памяти и VRAM",
    "what a host is: CPU, memory, disks, network, GPUs, OS": "из чего состоит хост: CPU, память, диски, сеть, GPU, ОС",
    "a host's containers: state, health, restarts, CPU, memory":
        "контейнеры хоста: состояние, здоровье, перезапуски, CPU, память",
    "register a host and get its agent settings": "зарегистрировать хост и получить настройки агента",
    "the agent file, to copy to a host": "файл агента, чтобы скопировать на хост",
    "rename a host": "переименовать хост",
    "issue a new secret; the old one stops working at once": "выдать новый секрет; старый сразу перестаёт работать",
    "delete a host's key and disconnect its agent": "удалить ключ хоста и отключить его агента",
    "RTT and loss of the link to a host, probed every INTERVAL": "RTT и потери связи с хостом, замер каждые INTERVAL",
    "throughput between a host and this server, both ways (about 20 s)":
        "пропускная способность между хостом и сервером, в обе стороны (около 20 с)",
    "probe a target from a host (alerts when it is down)": "проверять цель с хоста (тревога, когда она недоступна)",
    "a host's checks and their state": "проверки хоста и их состояние",
    "your alert rules and their state": "ваши правила тревог и их состояние",
    "alert when a metric crosses a threshold": "тревога, когда метрика переходит порог",
    "remove an alert": "удалить тревогу",
    "no notifications from a host for a while": "на время отключить уведомления от хоста",
    "notifications back on": "снова включить уведомления",
    "silent notifications in these hours (MBOT_TZ)": "беззвучные уведомления в эти часы (MBOT_TZ)",
    "the chat's language (auto: your Telegram's)": "язык чата (auto — как в вашем Telegram)",
    "a one-time link that lets one more person use this bot (admin only)":
        "одноразовая ссылка, по которой ещё один человек сможет пользоваться ботом (только админ)",
    "what mbot can do": "что умеет mbot",
    "this chat's default host: commands then work without NAME": "хост по умолчанию для этого чата: команды будут "
                                                                 "работать без NAME",
    "a one-time link that shares a host with one person": "одноразовая ссылка, чтобы открыть хост одному человеку",
    "who a host is shared with, and a button to remove each": "кому открыт хост, с кнопкой, чтобы убрать каждого",
    "take a person's access to a host away": "закрыть человеку доступ к хосту",
    "{text}, e.g. {example}": "{text}, например {example}",
    "Unknown command /{name}. /help lists what I understand.": "Неизвестная команда /{name}. /help — что я понимаю.",
    # views.py
    "<b>mbot</b> watches your machines and reports here.": "<b>mbot</b> следит за вашими машинами и пишет сюда.",
    "Alerts, e.g. /setalert box1 cpu 90 5m, /setalert box1 disk:/ 95, /setalert box1 offline 2m.\n"
    "NAME may also be the first 8+ characters of a host's key id.":
        "Тревоги, например /setalert box1 cpu 90 5m, /setalert box1 disk:/ 95, /setalert box1 offline 2m.\n"
        "Вместо NAME можно указать первые 8+ символов id ключа хоста.",
    "Sorry, this mbot is private.": "Извините, это частный mbot.",
    "Sorry, this invite is not valid: it was already used, it expired, or it was mistyped. "
    "Ask whoever runs this mbot for a new one.":
        "Извините, приглашение недействительно: им уже воспользовались, оно истекло или набрано с ошибкой. "
        "Попросите новое у того, кто управляет этим mbot.",
    "This button is not for you": "Эта кнопка не для вас",
    "Only the admin of this mbot can invite people.": "Приглашать людей может только админ этого mbot.",
    "No such host. /hosts lists yours.": "Нет такого хоста. /hosts покажет ваши.",
    "You have no hosts yet. /newkey NAME registers one.": "У вас пока нет хостов. /newkey NAME зарегистрирует хост.",
    "Welcome: you are the admin of this mbot. /invite makes a one-time link for one more person.":
        "Добро пожаловать: вы админ этого mbot. /invite создаст одноразовую ссылку для ещё одного человека.",
    "Welcome to mbot.": "Добро пожаловать в mbot.",
    "Language: {language} ({how}). /lang en or /lang ru changes it.":
        "Язык: {language} ({how}). Сменить: /lang en или /lang ru.",
    "chosen with /lang; /lang auto follows your Telegram's language again":
        "выбран через /lang; /lang auto — снова как в вашем Telegram",
    "your Telegram's language": "как в вашем Telegram",
    "A one-time invite: the first person to use it can use this bot. It expires in {hours} h.":
        "Одноразовое приглашение: кто первым им воспользуется, получит доступ к боту. Истекает через {hours} ч.",
    "or, in a chat with the bot, they send <code>/start {code}</code>":
        "или пусть отправит боту в чате <code>/start {code}</code>",
    "In a chat with the bot, they send <code>/start {code}</code>":
        "Пусть отправит боту в чате <code>/start {code}</code>",
    "Delete this message once you have passed it on.": "Удалите это сообщение, когда передадите приглашение.",
    "Slow down: {what} works at most {n} times at once, then once every {every}. Try again in {wait}.": (
        "Не так быстро: {what} можно вызвать не больше {n} раза подряд, затем раз в {every}. "
        "Попробуйте через {wait}.",
        "Не так быстро: {what} можно вызвать не больше {n} раз подряд, затем раз в {every}. "
        "Попробуйте через {wait}.",
        "Не так быстро: {what} можно вызвать не больше {n} раз подряд, затем раз в {every}. "
        "Попробуйте через {wait}."),
    "🗑 Delete this message": "🗑 Удалить сообщение",
    "{watts} W": "{watts} Вт",
    "never": "никогда",
    "{duration} ago": "{duration} назад",
    "online": "на связи",
    "offline": "не на связи",
    "rebooting": "перезагружается",
    "shut down": "выключен",
    "<b>{name}</b>: shutdown started. It shows as shut down until it is back; no offline alert.":
        "<b>{name}</b>: выключение началось. До возвращения хост показан выключенным; тревоги «не на связи» не будет.",
    "<b>{name}</b>: reboot started. You will hear when it is back; no offline alert meanwhile.":
        "<b>{name}</b>: перезагрузка началась. Сообщу, когда хост вернётся; тревоги «не на связи» пока не будет.",
    "RTT {rtt}": "RTT {rtt}",
    "jitter {jitter}": "джиттер {jitter}",
    "loss {loss} %": "потери {loss} %",
    "Link to server: {parts}": "Связь с сервером: {parts}",
    "<b>{name}</b> {state} · last seen {ago}": "<b>{name}</b> {state} · последний раз на связи {ago}",
    "No data yet: start the agent with this host's secret.": "Данных пока нет: запустите агента с секретом этого хоста.",
    "load {load}": "нагрузка {load}",
    "({n} core)": ("({n} ядро)", "({n} ядра)", "({n} ядер)"),
    "RAM": "ОЗУ",
    "Swap": "Swap",
    "Disk {mount} {used}": "Диск {mount} {used}",
    "Disk I/O read {read} · write {write}": "Диски: чтение {read} · запись {write}",
    "Net ↓ {rx} ↑ {tx}": "Сеть ↓ {rx} ↑ {tx}",
    "Temp {temps}": "Темп. {temps}",
    "Uptime {duration}": "Аптайм {duration}",
    "{n} process": ("{n} процесс", "{n} процесса", "{n} процессов"),
    "Containers {tally}": "Контейнеры: {tally}",
    "{n} sample dropped during an outage": ("{n} замер потерян во время сбоя", "{n} замера потеряны во время сбоя",
                                            "{n} замеров потеряно во время сбоя"),
    "{n} sample not stored: dated more than a week back or minutes ahead (is the host's clock right?)": (
        "{n} замер не сохранён: датирован больше чем на неделю назад или на минуты вперёд (верны ли часы хоста?)",
        "{n} замера не сохранены: датированы больше чем на неделю назад или на минуты вперёд (верны ли часы хоста?)",
        "{n} замеров не сохранено: датированы больше чем на неделю назад или на минуты вперёд (верны ли часы "
        "хоста?)"),
    "Agent {agent} · {os}": "Агент {agent} · {os}",
    "Checks {up}/{total} up": "Проверки: в порядке {up}/{total}",
    "cert of {name} {days} d": "сертификат {name} {days} д",
    "<b>{name}</b> has no checks. Add one: /check {name} https://example.com (or tcp://HOST:PORT) [EVERY]":
        "У <b>{name}</b> нет проверок. Добавить: /check {name} https://example.com (или tcp://ХОСТ:ПОРТ) [EVERY]",
    "{n} check": ("{n} проверка", "{n} проверки", "{n} проверок"),
    "⚠️ This host's agent does not run checks: update it (/agent).":
        "⚠️ Агент этого хоста не выполняет проверки: обновите его (/agent).",
    "🐳 Containers": "🐳 Контейнеры",
    "🔄 Refresh": "🔄 Обновить",
    "Card": "Карточка",
    "<b>{name}</b> · containers": "<b>{name}</b> · контейнеры",
    "No containers reported. The agent reports them when it can open a Docker or Podman socket (its user in the "
    "docker group, or AGENT_CONTAINER_SOCKET); its log says which.":
        "Контейнеров в отчёте нет. Агент сообщает о них, когда может открыть сокет Docker или Podman (его "
        "пользователь в группе docker или AGENT_CONTAINER_SOCKET); какой — видно в его логе.",
    "{n} restart": ("{n} перезапуск", "{n} перезапуска", "{n} перезапусков"),
    "… and {n} more (python -m mbot containers {name} lists all)":
        "… и ещё {n} (python -m mbot containers {name} покажет все)",
    "⚙️ Processes": "⚙️ Процессы",
    "📶 Stability": "📶 Стабильность",
    "🚀 Speed test": "🚀 Скорость",
    "Reboot": "Перезагрузить",
    "Shutdown": "Выключить",
    "🩺 Diagnostics": "🩺 Диагностика",
    "<b>{name}</b> · diagnostics": "<b>{name}</b> · диагностика",
    "Status card": "Карточка",
    "{mark} <b>{name}</b>{shared} - {state}, last seen {ago}":
        "{mark} <b>{name}</b>{shared} — {state}, последний раз на связи {ago}",
    "{state}, last seen {ago}": "{state}, последний раз на связи {ago}",
    "agent {version}": "агент {version}",
    ": on that machine, <code>{line}</code>": ": на той машине — <code>{line}</code>",
    "an agent older than this server's {version}; it updates in place{how}":
        "агент старее серверного {version}; обновляется на месте{how}",
    "RAM {pct} %": "ОЗУ {pct} %",
    "Disk {pct} %": "Диск {pct} %",
    "Host <b>{name}</b> registered (key <code>{key_id}</code>).":
        "Хост <b>{name}</b> зарегистрирован (ключ <code>{key_id}</code>).",
    "Install the agent: paste this on the host (it sets it up in /opt/mbot-agent as a systemd service and says "
    "when it is connected):": "Установка агента: вставьте это на хосте (он встанет в /opt/mbot-agent как служба "
                              "systemd и сообщит, когда подключится):",
    "Or run the agent by hand (the file and its .env follow):": "Или запустите агента вручную (файл и его .env ниже):",
    "Secret: <code>{secret}</code>": "Секрет: <code>{secret}</code>",
    "Server fingerprint: <code>{fingerprint}</code>": "Отпечаток сервера: <code>{fingerprint}</code>",
    "This message holds the secret and is not shown again: delete it once you have copied it.":
        "В этом сообщении секрет, и он больше не будет показан: удалите сообщение, когда скопируете.",
    "The mbot agent, to run by hand. It needs psutil, trio and trio-websocket: in a venv (<code>python3 -m venv "
    "venv &amp;&amp; venv/bin/pip install psutil trio trio-websocket</code>) or, on Debian/Ubuntu, <code>apt "
    "install python3-psutil python3-trio python3-trio-websocket</code> (and <code>nvidia-ml-py</code> with NVIDIA "
    "GPUs). Then <code>python3 mbot_agent.py</code>; <code>--check-connection</code> tests the settings; "
    "<code>--install-systemd</code> keeps it running.":
        "Агент mbot для запуска вручную. Ему нужны psutil, trio и trio-websocket: в venv (<code>python3 -m venv "
        "venv &amp;&amp; venv/bin/pip install psutil trio trio-websocket</code>) или, в Debian/Ubuntu, <code>apt "
        "install python3-psutil python3-trio python3-trio-websocket</code> (и <code>nvidia-ml-py</code> для GPU "
        "NVIDIA). Затем <code>python3 mbot_agent.py</code>; <code>--check-connection</code> проверит настройки; "
        "<code>--install-systemd</code> оставит его работать.",
    "Settings for <b>{name}</b>: save as <code>.env</code> next to mbot_agent.py (or run <code>python3 "
    "mbot_agent.py --env-file {name}.env</code>). It holds the secret: delete this message once saved.":
        "Настройки для <b>{name}</b>: сохраните как <code>.env</code> рядом с mbot_agent.py (или запустите "
        "<code>python3 mbot_agent.py --env-file {name}.env</code>). В нём секрет: удалите это сообщение, когда "
        "сохраните.",
    "Reboot <b>{name}</b>? (expires in 60 s)": "Перезагрузить <b>{name}</b>? (60 с на ответ)",
    "Shutdown <b>{name}</b>? (expires in 60 s)": "Выключить <b>{name}</b>? (60 с на ответ)",
    "Yes": "Да",
    "Cancel": "Отмена",
    "Revoke <b>{name}</b>? Its key stops working and its agent is disconnected.":
        "Отозвать <b>{name}</b>? Его ключ перестанет работать, а агент будет отключён.",
    "Revoke, keep history": "Отозвать, историю оставить",
    "Revoke and delete history": "Отозвать и удалить историю",
    "The agent refuses power commands. To allow them, start it with AGENT_ALLOW_POWER=1 (and as a user that may "
    "reboot the machine).": "Агент отказывается выполнять команды питания. Чтобы разрешить, запустите его с "
                            "AGENT_ALLOW_POWER=1 (и от пользователя, которому можно перезагружать машину).",
    "offline alert off": "тревога «не на связи» выключена",
    "offline after {duration}": "не на связи дольше {duration}",
    "offline (default delay)": "не на связи (задержка по умолчанию)",
    "{metric} down": "{metric} не работает",
    "{rule} for {duration}": "{rule} в течение {duration}",
    "(muted for {duration})": "(без уведомлений ещё {duration})",
    "offline for {duration}": "не на связи уже {duration}",
    "firing for {duration}": "горит уже {duration}",
    "ok": "в норме",
    "… (cut to fit one message)": "… (обрезано, чтобы влезть в одно сообщение)",
    "<b>{name}</b> has sent no process list yet (agents send one every interval unless AGENT_PROCESSES=0).":
        "<b>{name}</b> ещё не присылал список процессов (агенты присылают его каждый интервал, если не "
        "AGENT_PROCESSES=0).",
    "Nothing uses CPU or memory (an empty list).": "Ничто не занимает CPU или память (список пуст).",
    "📈 Chart": "📈 График",
    "🔕 Mute 1h": "🔕 Тишина 1 ч",
    "✔️ Ack": "✔️ Принято",
    "<b>{name}</b> · top processes when the {label} alert fired, {duration} ago":
        "<b>{name}</b> · топ процессов в момент тревоги {label}, {duration} назад",
    "No process list was captured (the host had sent none recently).":
        "Список процессов не сохранён (хост давно его не присылал).",
    # bot.py
    "Quiet hours: {window} ({zone}). /quiet off ends them.": "Тихие часы: {window} ({zone}). /quiet off выключит их.",
    "No quiet hours: notifications make a sound at any time. /quiet 23:00-07:00 sets them (in {zone}).":
        "Тихих часов нет: уведомления звучат в любое время. /quiet 23:00-07:00 задаст их (по {zone}).",
    "Quiet hours are off: notifications make a sound at any time.":
        "Тихие часы выключены: уведомления звучат в любое время.",
    "Quiet hours: {window} ({zone}). Alerts and reminders then arrive without a sound; nothing is held back. "
    "/quiet off ends them.": "Тихие часы: {window} ({zone}). В это время тревоги и напоминания приходят без звука; "
                             "ничего не задерживается. /quiet off выключит их.",
    "<b>{old}</b> is now <b>{new}</b>.": "<b>{old}</b> теперь называется <b>{new}</b>.",
    "Removed check <b>{check}</b> ({target}) of <b>{name}</b> and its alerts.":
        "Проверка <b>{check}</b> ({target}) хоста <b>{name}</b> и её тревоги удалены.",
    "<b>{name}</b> checks {target} every {every} as <b>{check}</b>. You get an alert when it fails {n} time in a row "
    "and when its certificate has less than {days} days left (/delalert {name} check:{check} or cert:{check} stops "
    "one). /checks {name} shows the results. The check runs with the agent's network access.": (
        "<b>{name}</b> проверяет {target} каждые {every} под именем <b>{check}</b>. Тревога придёт после {n} сбоя "
        "подряд и когда сертификату останется меньше {days} дней (/delalert {name} check:{check} или cert:{check} "
        "отключит её). /checks {name} покажет результаты. Проверка идёт с сетевым доступом агента.",
        "<b>{name}</b> проверяет {target} каждые {every} под именем <b>{check}</b>. Тревога придёт после {n} сбоев "
        "подряд и когда сертификату останется меньше {days} дней (/delalert {name} check:{check} или cert:{check} "
        "отключит её). /checks {name} покажет результаты. Проверка идёт с сетевым доступом агента.",
        "<b>{name}</b> проверяет {target} каждые {every} под именем <b>{check}</b>. Тревога придёт после {n} сбоев "
        "подряд и когда сертификату останется меньше {days} дней (/delalert {name} check:{check} или cert:{check} "
        "отключит её). /checks {name} покажет результаты. Проверка идёт с сетевым доступом агента."),
    "⚠️ This host's agent is too old to run checks: update it (/agent).":
        "⚠️ Агент этого хоста слишком старый для проверок: обновите его (/agent).",
    "Alert set on <b>{name}</b>: {rule}.": "Тревога на <b>{name}</b>: {rule}.",
    "Alert {metric} removed from <b>{name}</b>.": "Тревога {metric} снята с <b>{name}</b>.",
    "<b>{name}</b> has no {metric} alert. /alerts lists them.": "У <b>{name}</b> нет тревоги {metric}. /alerts покажет все.",
    "<b>{name}</b> muted for {duration}; what is still firing then will be reported. /unmute ends it sooner.":
        "<b>{name}</b>: уведомления выключены на {duration}; о том, что будет гореть потом, сообщу. /unmute включит "
        "раньше.",
    "<b>{name}</b> is not muted.": "У <b>{name}</b> уведомления и так включены.",
    "No data from <b>{name}</b> for {what}.": "Нет данных от <b>{name}</b> ({what}).",
    "This button is no longer valid.": "Эта кнопка больше не действует.",
    "<b>{name}</b> is offline.": "<b>{name}</b> не на связи.",
    "Cancelled.": "Отменено.",
    "Its history is deleted.": "Его история удалена.",
    "Its history is kept; /rotate gives it a new key.": "Его история сохранена; /rotate выдаст ему новый ключ.",
    "<b>{name}</b> is revoked: its agent was disconnected.": "<b>{name}</b> отозван: его агент отключён.",
    "<b>{name}</b> muted for 1 h; what is still firing then will be reported. /unmute {name} ends it sooner.":
        "<b>{name}</b>: уведомления выключены на 1 ч; о том, что будет гореть потом, сообщу. /unmute {name} включит "
        "раньше.",
    "This alert is too old: its details are no longer kept.": "Эта тревога слишком старая: подробности уже не хранятся.",
    "Acknowledged: no more reminders for {label} on <b>{name}</b> until it resolves.":
        "Принято: напоминаний о {label} на <b>{name}</b> больше не будет, пока тревога не закончится.",
    "This alert on <b>{name}</b> is no longer firing.": "Эта тревога на <b>{name}</b> уже не горит.",
    "The stability test of <b>{name}</b> failed; the server's log says why.":
        "Тест стабильности <b>{name}</b> не удался; причина — в логе сервера.",
    "Stability test of <b>{name}</b>: {n} probes every {interval} for {duration}...": (
        "Тест стабильности <b>{name}</b>: {n} замер каждые {interval} в течение {duration}...",
        "Тест стабильности <b>{name}</b>: {n} замера каждые {interval} в течение {duration}...",
        "Тест стабильности <b>{name}</b>: {n} замеров каждые {interval} в течение {duration}..."),
    "<b>{name}</b> went offline before the test started.": "<b>{name}</b> пропал со связи до начала теста.",
    "Stability test of <b>{name}</b>: done.": "Тест стабильности <b>{name}</b>: готово.",
    "Stability test of <b>{name}</b>: its agent disconnected after {n} probes.": (
        "Тест стабильности <b>{name}</b>: агент отключился после {n} замера.",
        "Тест стабильности <b>{name}</b>: агент отключился после {n} замеров.",
        "Тест стабильности <b>{name}</b>: агент отключился после {n} замеров."),
    "{name} · stability": "{name} · стабильность",
    "Speed test of <b>{name}</b>: about {duration}, download then upload...":
        "Тест скорости <b>{name}</b>: около {duration}, сначала загрузка на хост, потом выгрузка...",
    "<b>{name}</b> went offline before the speed test started.": "<b>{name}</b> пропал со связи до начала теста скорости.",
    "The speed test of <b>{name}</b> failed; the server's log says why.":
        "Тест скорости <b>{name}</b> не удался; причина — в логе сервера.",
    "This confirmation has expired; nothing was done.": "Время на подтверждение вышло; ничего не сделано.",
    "<b>{name}</b> is offline; nothing was sent.": "<b>{name}</b> не на связи; ничего не отправлено.",
    "Asking <b>{name}</b> to reboot...": "Прошу <b>{name}</b> перезагрузиться...",
    "Asking <b>{name}</b> to shutdown...": "Прошу <b>{name}</b> выключиться...",
    "<b>{name}</b> did not answer within {seconds} s.": "<b>{name}</b> не ответил за {seconds} с.",
    "<b>{name}</b> did not reboot.": "<b>{name}</b> не перезагрузился.",
    "<b>{name}</b> did not shutdown.": "<b>{name}</b> не выключился.",
    "<b>{name}</b> could not reboot: {error}": "<b>{name}</b> не смог перезагрузиться: {error}",
    "<b>{name}</b> could not shutdown: {error}": "<b>{name}</b> не смог выключиться: {error}",
    "The agent file is not on this server; get agent/mbot_agent.py from mbot's repository.":
        "Файла агента на этом сервере нет; возьмите agent/mbot_agent.py из репозитория mbot.",
    # the limit notice (app.py), the test refusals (agents.py)
    "<b>{name}</b> went over its limit of {limit}: {detail}. Its agent was disconnected and will retry; the server "
    "keeps everything it had stored.": "<b>{name}</b> превысил лимит {limit}: {detail}. Его агент отключён и "
                                      "подключится снова; всё, что сервер уже сохранил, остаётся.",
    " is offline: a stability test needs its agent connected.":
        " не на связи: для теста стабильности нужен подключённый агент.",
    ": not now: {reason}": ": не сейчас: {reason}",
    " is offline: a speed test needs its agent connected.": " не на связи: для теста скорости нужен подключённый агент.",
    ": its agent is too old for a speed test; update mbot_agent.py (/agent).":
        ": его агент слишком старый для теста скорости; обновите mbot_agent.py (/agent).",
    "Another speed test is running on this server; try again in half a minute.":
        "На сервере уже идёт другой тест скорости; попробуйте через полминуты.",
}
