"""Russian: texts of the cores whose words reach the chat (durations, processes, containers, inventory, members,
checks, the metric catalogue's labels, plot, service, stability, speed test, quiet hours, users, install)."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # durations.py
    "{n} d": "{n} д",
    "{n} h": "{n} ч",
    "{n} min": "{n} мин",
    "{n} s": "{n} с",
    "a number and s, m, h, d, w or y, like 30m, 48h, 7d, 1y":
        "число и s, m, h, d, w или y, например 30m, 48h, 7d, 1y",
    "{text!r} is not a duration: use {syntax}": "{text!r} — не длительность: нужно {syntax}",
    "{text!r}: that duration is too long": "{text!r}: слишком большая длительность",
    "{text!r}: a duration must be longer than 0": "{text!r}: длительность должна быть больше нуля",
    # processes.py
    "Top CPU": "Топ по CPU",
    "Top memory": "Топ по памяти",
    "Top VRAM": "Топ по VRAM",
    "{n} processes, {duration} ago": ("{n} процесс, {duration} назад", "{n} процесса, {duration} назад",
                                      "{n} процессов, {duration} назад"),
    "{shown} of {n} processes, {duration} ago": ("{shown} из {n} процесса, {duration} назад",
                                                 "{shown} из {n} процессов, {duration} назад",
                                                 "{shown} из {n} процессов, {duration} назад"),
    "({duration} ago)": "({duration} назад)",
    "(not current: the host sends no newer list)": "(устарел: более свежего списка хост не присылает)",
    # containers.py: one container's state, and counts in a tally ("12 контейнеров: работают: 10, ...")
    "exited": "остановлен",
    "unhealthy": "нездоров",
    "restarting": "перезапускается",
    "paused": "на паузе",
    "created": "создан",
    "dead": "мёртв",
    "removing": "удаляется",
    "unknown": "неизвестно",
    "{n} running": "работают: {n}",
    "{n} exited": "остановлены: {n}",
    "{n} unhealthy": "нездоровы: {n}",
    "{n} restarting": "перезапускаются: {n}",
    "{n} paused": "на паузе: {n}",
    "{n} created": "созданы: {n}",
    "{n} dead": "мертвы: {n}",
    "{n} removing": "удаляются: {n}",
    "{n} unknown": "неизвестно: {n}",
    "no containers": "контейнеров нет",
    "{n} container": ("{n} контейнер", "{n} контейнера", "{n} контейнеров"),
    "{n} up": "работают: {n}",
    "{n} down": "не работают: {n}",
    # inventory.py
    "No inventory from this host yet: its agent has not connected since it was updated (agents older than this "
    "server send none).": "Сведений о составе этого хоста пока нет: его агент не подключался после обновления "
                          "(агенты старее этого сервера их не присылают).",
    "Services not running ({n} of {total})": "Не работают службы ({n} из {total})",
    "Services: {n} running, none failed": "Службы: {n} работают, сбоев нет",
    "Disks": "Диски",
    "Network": "Сеть",
    "GPUs": "GPU",
    "{nic} up": "{nic} поднят",
    "{nic} down": "{nic} опущен",
    "driver {version}": "драйвер {version}",
    "Virtualisation: {virt}": "Виртуализация: {virt}",
    "none (bare metal)": "нет (железо)",
    "RAM {size}": "ОЗУ {size}",
    "swap {size}": "swap {size}",
    "booted {when} ({duration} ago)": "загружен {when} ({duration} назад)",
    "agent {version}": "агент {version}",
    "… and {n} more": "… и ещё {n}",
    "for {duration}": "уже {duration}",
    "… ({n} more lines cut)": ("… (не показана ещё {n} строка)", "… (не показаны ещё {n} строки)",
                               "… (не показано ещё {n} строк)"),
    "kernel {version}": "ядро {version}",
    "{n} cores": ("{n} ядро", "{n} ядра", "{n} ядер"),
    "{n} threads": ("{n} поток", "{n} потока", "{n} потоков"),
    "unknown model": "модель неизвестна",
    # members.py
    "running": "работает",
    "starting or stopping": "запускается или останавливается",
    "not running": "не работает",
    "failed": "сбой",
    "service {name}": "служба {name}",
    "check {name}": "проверка {name}",
    "state {code}": "состояние {code}",
    "up": "работает",
    "down": "не работает",
    # checks.py
    "{name}: {result} ({target}, every {every})": "{name}: {result} ({target}, каждые {every})",
    "{name}: not run yet ({target}, every {every})": "{name}: ещё не запускалась ({target}, каждые {every})",
    "failing": "сбоит",
    "pending": "ожидает",
    "{ms} ms": "{ms} мс",
    "cert {days} d": "сертификат {days} д",
    "a target is 1 to {n} characters": "цель — от 1 до {n} символов",
    "a target has no spaces or control characters": "в цели не должно быть пробелов и управляющих символов",
    "{target!r}: a check is http://, https:// or tcp://HOST:PORT":
        "{target!r}: проверка — это http://, https:// или tcp://ХОСТ:ПОРТ",
    "{target!r} names no host": "в {target!r} не указан хост",
    "{target!r} is not a valid URL ({error})": "{target!r} — неверный URL ({error})",
    "credentials in the URL are not supported: they would be stored and shown":
        "логин и пароль в URL не поддерживаются: они бы хранились и показывались",
    "a TCP check needs a port: tcp://HOST:PORT": "для TCP-проверки нужен порт: tcp://ХОСТ:ПОРТ",
    "a TCP check is tcp://HOST:PORT, nothing after it": "TCP-проверка — это tcp://ХОСТ:ПОРТ, без ничего после",
    "EVERY {text!r} is not a duration: try 30s, 5m or 1h":
        "EVERY {text!r} — не длительность: например 30s, 5m или 1h",
    "EVERY is {low} to {high}": "EVERY — от {low} до {high}",
    "Usage: {usage}": "Использование: {usage}",
    "/check NAME URL|tcp://HOST:PORT [EVERY] - probe a target from the host every EVERY (default 1m, 10s to 1d), e.g. "
    "/check box1 https://example.com 5m; /check NAME del CHECK removes one":
        "/check NAME URL|tcp://HOST:PORT [EVERY] - проверять цель с хоста каждые EVERY (по умолчанию 1m, от 10s до "
        "1d), например /check box1 https://example.com 5m; /check NAME del CHECK удаляет проверку",
    # plotspec.py
    "Usage: /plot NAME METRICS SPAN... [LIMIT] [UNIT]": "Использование: /plot NAME METRICS SPAN... [LIMIT] [UNIT]",
    "Examples: /plot box1 cpu;gpu 2d 3h 80 · /plot box1 ram 1h GiB · /plot box1 net 30m 100 mbit":
        "Примеры: /plot box1 cpu;gpu 2d 3h 80 · /plot box1 ram 1h GiB · /plot box1 net 30m 100 mbit",
    "Metrics of this host: {metrics}": "Метрики этого хоста: {metrics}",
    "{words}; one of several: {forms}": "{words}; одна из нескольких: {forms}",
    "last {span}": "за {span}",
    "Missing NAME, METRICS and SPAN.": "Не указаны NAME, METRICS и SPAN.",
    "Missing METRICS and SPAN.": "Не указаны METRICS и SPAN.",
    "Missing METRICS: name at least one, like cpu or ram;gpu.": "Не указаны METRICS: нужна хотя бы одна, например cpu или ram;gpu.",
    "Unknown metric {word}.": "Неизвестная метрика {word}.",
    "Metrics: {words}.": "Метрики: {words}.",
    "{word} is not a SPAN": "{word} — не SPAN",
    "Missing SPAN": "Не указан SPAN",
    "{problem}: use one or more of <n>s, m, h, d, w, y, like 30m, 2d 3h or 1y.":
        "{problem}: нужно одно или несколько из <n>s, m, h, d, w, y, например 30m, 2d 3h или 1y.",
    "SPAN {span} reaches back further than the history this server keeps ({longest}): ask for at most that.":
        "SPAN {span} уходит дальше, чем история на этом сервере ({longest}): просите не больше.",
    "LIMIT {limit} must be a number above 0.": "LIMIT {limit} должен быть числом больше 0.",
    "Unexpected {token}: after SPAN come an optional LIMIT (a number) and UNIT (%, b, kib, mb, gib, bit, mbit ...).":
        "Неожиданное {token}: после SPAN могут идти LIMIT (число) и UNIT (%, b, kib, mb, gib, bit, mbit ...).",
    "Unit {unit!r} does not fit {metrics}: sizes (gib ...) go with ram, swap, vram and disk; bits (mbit ...) with "
    "net; % with cpu, gpu, ram, swap, vram and disk.":
        "Единица {unit!r} не подходит к {metrics}: размеры (gib ...) — для ram, swap, vram и disk; биты (mbit ...) — "
        "для net; % — для cpu, gpu, ram, swap, vram и disk.",
    "Unknown unit {unit}.": "Неизвестная единица {unit}.",
    "Unit {unit!r} does not fit {metrics}.": "Единица {unit!r} не подходит к {metrics}.",
    "This host has no {word}.": "У этого хоста нет {word}.",
    "These metrics need {n} different units ({units}); one chart has at most {most} axes: split them over two "
    "charts.": "Этим метрикам нужно {n} разных единицы ({units}); на одном графике не больше {most} осей: "
               "разнесите их на два графика.",
    # quiet.py
    "Usage: /quiet HH:MM-HH:MM (e.g. /quiet 23:00-07:00), /quiet off, or /quiet to see the setting":
        "Использование: /quiet ЧЧ:ММ-ЧЧ:ММ (например /quiet 23:00-07:00), /quiet off или /quiet, чтобы увидеть "
        "настройку",
    "{text!r} is not a window of the clock.": "{text!r} — не промежуток времени суток.",
    "{text} is an empty window; /quiet off turns quiet hours off.": "{text} — пустой промежуток; /quiet off выключает тихие часы.",
    # service.py
    "a host name is 1-32 characters of letters, digits, '.', '_' and '-'":
        "имя хоста — 1-32 символа: латинские буквы, цифры, '.', '_' и '-'",
    "{name!r} is not a valid name: {rule}": "{name!r} — недопустимое имя: {rule}",
    "{n} hosts already, the most this server allows per user (MBOT_MAX_HOSTS_PER_USER={limit}): /revoke one and "
    "delete its history to make room": (
        "уже {n} хост — больше на пользователя этот сервер не разрешает (MBOT_MAX_HOSTS_PER_USER={limit}): "
        "отзовите один (/revoke) и удалите его историю",
        "уже {n} хоста — больше на пользователя этот сервер не разрешает (MBOT_MAX_HOSTS_PER_USER={limit}): "
        "отзовите один (/revoke) и удалите его историю",
        "уже {n} хостов — больше на пользователя этот сервер не разрешает (MBOT_MAX_HOSTS_PER_USER={limit}): "
        "отзовите один (/revoke) и удалите его историю"),
    "you already have a host named {name!r}": "у вас уже есть хост с именем {name!r}",
    "you already have a host named {name!r}; names that differ only in case are not allowed":
        "у вас уже есть хост с именем {name!r}; имена, отличающиеся только регистром, не допускаются",
    "{ref!r} could be {names}: type the name exactly as listed": "{ref!r} — это может быть {names}: введите имя точно как в списке",
    " or ": " или ",
    "{name} has {n} checks, the most a host may have: remove one first (/check {name} del CHECK)": (
        "у {name} уже {n} проверка, больше у хоста быть не может: сначала удалите одну (/check {name} del CHECK)",
        "у {name} уже {n} проверки, больше у хоста быть не может: сначала удалите одну (/check {name} del CHECK)",
        "у {name} уже {n} проверок, больше у хоста быть не может: сначала удалите одну (/check {name} del CHECK)"),
    "you have {n} checks, the most a user may have: remove one first": (
        "у вас уже {n} проверка, больше быть не может: сначала удалите одну",
        "у вас уже {n} проверки, больше быть не может: сначала удалите одну",
        "у вас уже {n} проверок, больше быть не может: сначала удалите одну"),
    "{name} already checks {target} (as {check})": "{name} уже проверяет {target} (как {check})",
    "{name} has no check {ref!r}: /checks {name} lists them": "у {name} нет проверки {ref!r}: /checks {name} покажет все",
    # speedtest.py
    "Speed test of {name}: the path between the host and this mbot server, over the agent's TLS connection (not the "
    "internet).": "Тест скорости {name}: путь между хостом и этим сервером mbot, по TLS-соединению агента (не "
                  "интернет).",
    "Download (server -> host)": "Загрузка (сервер -> хост)",
    "Upload (host -> server)": "Выгрузка (хост -> сервер)",
    "{label}: no result (the agent did not answer, or refused: it takes one upload a minute).":
        "{label}: нет результата (агент не ответил или отказал: он принимает одну выгрузку в минуту).",
    "{label}: {rate} Mbit/s ({mb} MB in {seconds} s)": "{label}: {rate} Мбит/с ({mb} МБ за {seconds} с)",
    # stability.py, stabilitychart.py
    "INTERVAL {text!r} is not valid: try 100ms, 1ms or 1s.": "INTERVAL {text!r} не подходит: например 100ms, 1ms или 1s.",
    "INTERVAL must be between 1 ms and 1 s, got {interval}.": "INTERVAL должен быть от 1 мс до 1 с, а не {interval}.",
    "e.g. /stability box1, /stability box1 10ms 2m; INTERVAL 1ms to 1s (default 100ms), DURATION up to 10m (default "
    "60s).": "например /stability box1, /stability box1 10ms 2m; INTERVAL от 1ms до 1s (по умолчанию 100ms), "
             "DURATION до 10m (по умолчанию 60s).",
    "DURATION {text!r} is not a duration: e.g. 30s, 2m, 10m.": "DURATION {text!r} — не длительность: например 30s, 2m, 10m.",
    "DURATION must be between 1 s and 10 min, got {duration}.": "DURATION должна быть от 1 с до 10 мин, а не {duration}.",
    "{done} %: {n} probes": ("{done} %: {n} замер", "{done} %: {n} замера", "{done} %: {n} замеров"),
    "p50 {p50} lately, max {max}": "p50 за последнее время {p50}, максимум {max}",
    "{n} lost so far": "потеряно пока: {n}",
    "{n} skipped": "пропущено: {n}",
    "Stability of {name}: {n} probes every {interval} for {duration}": (
        "Стабильность {name}: {n} замер каждые {interval} в течение {duration}",
        "Стабильность {name}: {n} замера каждые {interval} в течение {duration}",
        "Стабильность {name}: {n} замеров каждые {interval} в течение {duration}"),
    "RTT p50 {p50} · p95 {p95} · max {max} · jitter {jitter}": "RTT p50 {p50} · p95 {p95} · макс {max} · джиттер {jitter}",
    "Loss {loss} % ({lost} of {sent} not answered within {timeout} s)":
        "Потери {loss} % (без ответа за {timeout} с: {lost} из {sent})",
    "{n} probes not sent: {limit} were unanswered when their time came (a stalled link, or a server too busy for "
    "this INTERVAL)": (
        "{n} замер не отправлен: в его время без ответа уже было {limit} (связь встала или сервер не успевает с таким "
        "INTERVAL)",
        "{n} замера не отправлены: в их время без ответа уже было {limit} (связь встала или сервер не успевает с "
        "таким INTERVAL)",
        "{n} замеров не отправлено: в их время без ответа уже было {limit} (связь встала или сервер не успевает с "
        "таким INTERVAL)"),
    "Measured: the server's WebSocket to the agent (its TLS connection), not the internet.":
        "Измерялось: WebSocket сервера до агента (его TLS-соединение), а не интернет.",
    "a stability test of this host is already running; wait until it ends.":
        "тест стабильности этого хоста уже идёт; дождитесь его окончания.",
    "the server is running other stability tests at its limit of {rate} probes/s; try again when they end, or with "
    "a longer INTERVAL.": "сервер уже ведёт другие тесты стабильности на пределе в {rate} замеров/с; попробуйте, "
                          "когда они закончатся, или с INTERVAL побольше.",
    "seconds since the start": "секунд от начала",
    "RTT (ms)": "RTT (мс)",
    "lost ({n})": "потеряно ({n})",
    "RTT min-max": "RTT мин-макс",
    "RTT median": "RTT медиана",
    # install.py
    "{host} is a guess (MBOT_PUBLIC_HOST is not set; it is the address of this machine's default route). If the host "
    "reaches this server by another name or address, use that in the line above, and set MBOT_PUBLIC_HOST to it so "
    "that new keys show it.": "{host} — догадка (MBOT_PUBLIC_HOST не задан; это адрес маршрута по умолчанию этой "
                              "машины). Если хост видит этот сервер под другим именем или адресом, подставьте его в "
                              "строку выше и задайте его в MBOT_PUBLIC_HOST, чтобы новые ключи показывали его.",
}
