"""Russian: the bot in groups (/bind, /unbind) and status pages (/statuspage)."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # /bind, /unbind (mbot/telegram/bot.py)
    "this topic": "эту тему",
    "this group": "эту группу",
    "<b>{name}</b>'s alerts now come to {where} as well as to your private chat; their buttons work for you alone. "
    "/unbind {name} stops it.":
        "Оповещения <b>{name}</b> теперь приходят в {where}, а также в ваш личный чат; их кнопки работают только "
        "для вас. /unbind {name} это отменяет.",
    "Use /{command} in the group that should get a host's alerts (add me to it first).":
        "Отправьте /{command} в группе, которая должна получать оповещения хоста (сначала добавьте меня в неё).",
    "Your hosts whose alerts come here: {names}.": "Ваши хосты, оповещения которых приходят сюда: {names}.",
    "None of your hosts sends its alerts here. /bind NAME does that.":
        "Ни один из ваших хостов не присылает сюда оповещения. Это делает /bind ИМЯ.",
    "{n} host of other members sends its alerts here too.": (
        "Ещё {n} хост других участников присылает сюда оповещения.",
        "Ещё {n} хоста других участников присылают сюда оповещения.",
        "Ещё {n} хостов других участников присылают сюда оповещения."),
    "<b>{name}</b>'s alerts no longer come here.": "Оповещения <b>{name}</b> больше не приходят сюда.",
    "<b>{name}</b> is not bound here.": "<b>{name}</b> не привязан к этому чату.",
    "This group already gets the alerts of {n} hosts, the most it can.":
        "Эта группа уже получает оповещения {n} хостов — это максимум.",
    "<b>{name}</b> already sends its alerts to {n} groups, the most it can; /unbind it in one of them first.":
        "<b>{name}</b> уже присылает оповещения в {n} групп — это максимум; сначала выполните /unbind в одной из них.",
    # /statuspage (mbot/telegram/bot.py, mbot/statuspage.py)
    "Your status page is stopped: its message says so within a minute.":
        "Ваша страница состояния остановлена: в течение минуты это будет сказано в её сообщении.",
    "⏸ No longer kept current.": "⏸ Больше не обновляется.",
    "You have no status page in that chat.": "У вас нет страницы состояния в этом чате.",
    "Use /statuspage in the group where the status message should be, or here as /statuspage @channel for a "
    "channel you administer: it lists your hosts and keeps itself current.":
        "Отправьте /statuspage в группе, где должно быть сообщение о состоянии, или здесь /statuspage @канал для "
        "канала, которым вы управляете: оно перечислит ваши хосты и будет обновляться само.",
    "Your status page is posted in {chat}; /statuspage {chat} off stops it.":
        "Ваша страница состояния опубликована в {chat}; /statuspage {chat} off её остановит.",
    "I could not post in {chat}: may I post messages there?":
        "Не удалось опубликовать в {chat}: у меня есть право отправлять туда сообщения?",
    "I cannot see {chat}: add me to it as an administrator first.":
        "Я не вижу {chat}: сначала добавьте меня туда администратором.",
    "Telegram did not answer; try again in a minute.": "Telegram не ответил; попробуйте через минуту.",
    "Only an administrator of {chat} may put a status page there.":
        "Разместить там страницу состояния может только администратор {chat}.",
    "up {day} % (24 h), {month} % (30 d)": "доступен {day} % (24 ч), {month} % (30 дн.)",
    "<b>Status</b> · kept current by mbot": "<b>Состояние</b> · обновляет mbot",
    "<i>An incident: the host sent nothing for longer than its offline delay.</i>":
        "<i>Инцидент: хост молчал дольше своей задержки «не в сети».</i>",
    "offline since {when}": "не в сети с {when}",
    "never connected": "ни разу не подключался",
    "last incident {when}, {minutes} min": "последний инцидент {when}, {minutes} мин",
    "no incident in 30 d": "без инцидентов за 30 дн.",
    "No hosts to show.": "Нет хостов для показа.",
    "… and {n} more": "… и ещё {n}",
    "in a group: send a host's alerts there too (no NAME: what is bound here)":
        "в группе: слать туда и оповещения хоста (без NAME: что привязано здесь)",
    "in a group: stop sending a host's alerts there": "в группе: больше не слать туда оповещения хоста",
    "one message that keeps your hosts' state current, in this group or a channel you administer":
        "одно сообщение с текущим состоянием ваших хостов в этой группе или в канале, которым вы управляете",
    "A key is a secret: send /{command} to me in a private chat, not in a group.":
        "Ключ — это секрет: отправьте /{command} мне в личный чат, а не в группу.",
}
