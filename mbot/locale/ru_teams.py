"""Russian: sharing hosts with roles (/share, /shares, /unshare), default hosts (/set), /linkkey, alerts to everyone."""
from __future__ import annotations

from ..i18n import Translation

RU: dict[str, Translation] = {
    # roles (mbot.access)
    "owner": "владелец",
    "operator": "оператор",
    "viewer": "наблюдатель",
    "nobody": "никто",
    "You are a {role} of {name}: that takes its {needed}. Ask its owner.":
        "Ваша роль на {name}: {role}, а для этого нужен {needed}. Обратитесь к владельцу.",
    "Several hosts shared with you are named {name}: use the first 8 characters of its key id (/hosts shows the "
    "hosts).":
        "С вами поделились несколькими хостами с именем {name}: укажите первые 8 символов id его ключа (/hosts "
        "покажет хосты).",
    "That person has no role on {name} (any more).": "У этого человека нет (больше) роли на {name}.",
    # /share, /shares, /unshare
    "A host is shared as viewer or operator: /share NAME [viewer|operator]":
        "Хостом делятся как с наблюдателем или оператором: /share ИМЯ [viewer|operator]",
    "see it (card, charts, alerts) and act on it (refresh, reboot, mute, ack, alert rules)":
        "видеть его (карточка, графики, оповещения) и управлять им (обновление, перезагрузка, тишина, "
        "подтверждение, правила оповещений)",
    "see it: card, charts, processes and its alerts": "видеть его: карточку, графики, процессы и оповещения",
    "A one-time link to share <b>{name}</b> as {role}: whoever opens it first may {what}. It expires in {hours} h.":
        "Одноразовая ссылка, чтобы поделиться <b>{name}</b> (роль: {role}): первый, кто её откроет, сможет {what}. "
        "Она действует {hours} ч.",
    "Or they send the bot <code>/start {code}</code>": "Или пусть отправят боту <code>/start {code}</code>",
    "They send the bot <code>/start {code}</code>": "Пусть отправят боту <code>/start {code}</code>",
    "/shares {name} lists who has access; delete this message once you have passed it on.":
        "/shares {name} покажет, у кого есть доступ; удалите это сообщение, когда передадите ссылку.",
    "<b>{name}</b> is shared with nobody. /share {name} [viewer|operator] makes a link.":
        "<b>{name}</b> ни с кем не поделён. /share {name} [viewer|operator] создаст ссылку.",
    "<b>{name}</b> is shared with:": "<b>{name}</b> доступен:",
    "Remove {who}": "Убрать {who}",
    "<b>{name}</b> is now shared with you as {role}. /status {name} shows it; its alerts come here.":
        "Теперь вам доступен <b>{name}</b> (роль: {role}). /status {name} покажет его; его оповещения придут сюда.",
    "Nobody called {who} has a role on {name}: /shares {name} lists them.":
        "Ни у кого по имени {who} нет роли на {name}: /shares {name} покажет список.",
    "{who} no longer has access to <b>{name}</b>.": "У {who} больше нет доступа к <b>{name}</b>.",
    "👥 shared, operator": "👥 общий, оператор",
    "👥 shared, viewer": "👥 общий, наблюдатель",
    "/linkkey is gone: a secret no longer makes anyone a co-owner. The owner of a host sends /share NAME "
    "[viewer|operator] and forwards the one-time link it gives (viewer: card, charts, alerts; operator: also refresh, "
    "reboot, mute, ack, alert rules).":
        "/linkkey больше нет: секрет никого не делает совладельцем. Владелец хоста отправляет /share ИМЯ "
        "[viewer|operator] и пересылает одноразовую ссылку (наблюдатель: карточка, графики, оповещения; оператор: "
        "также обновление, перезагрузка, тишина, подтверждение, правила оповещений).",
    # /set
    "After /set NAME, commands work without NAME in that chat. The original's /list, /renamekey and /delkey work too.":
        "После /set ИМЯ команды работают в этом чате без ИМЕНИ. Прежние /list, /renamekey и /delkey тоже работают.",
    "This chat's default host is <b>{name}</b>. /set off forgets it.":
        "Хост по умолчанию в этом чате: <b>{name}</b>. /set off отменит это.",
    "No default host in this chat. /set NAME makes one: then /status, /plot, /setalert and the others work without "
    "NAME.":
        "В этом чате нет хоста по умолчанию. /set ИМЯ назначит его: тогда /status, /plot, /setalert и другие "
        "работают без ИМЕНИ.",
    "No default host in this chat any more: commands need NAME again.":
        "В этом чате больше нет хоста по умолчанию: командам снова нужно ИМЯ.",
    "<b>{name}</b> is this chat's default host: /status, /plot, /setalert and the others work without NAME. /set off "
    "forgets it.":
        "<b>{name}</b> теперь хост по умолчанию в этом чате: /status, /plot, /setalert и другие работают без ИМЕНИ. "
        "/set off отменит это.",
    # alerts to everyone
    "✔️ Acknowledged by {who}": "✔️ Подтвердил(а) {who}",
    "🔕 Muted by {who} for {minutes} min": "🔕 {who} включил(а) тишину на {minutes} мин",
}
