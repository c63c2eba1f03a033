"""Both languages through the fake Bot API server and the real server: a user whose Telegram speaks Russian is
answered in Russian, /lang en switches to English, and alerts follow the user's language."""
from __future__ import annotations

import re

from fakebot import FakeBot
from helpers import ack_reaching, read_db, sample_frame
from mbot.config import Settings
from test_alert_delivery import start
from test_bot import ALICE, BOB, Agent, WallClock, fake, say  # noqa: F401 (fake: a fixture)

CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)


async def offline_alert(fake: FakeBot, server, clock: WallClock, agent: Agent, start: str) -> str:
    """Take the host offline and move time past its delay: the text of the alert to ALICE that starts with `start`
    (the news of its coming back may arrive first)."""
    since = len(fake.sent)
    await agent.close()
    clock.offset += 3600
    server.alerting.clock_moved()
    call = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("chat_id") == ALICE
                               and c.params["text"].startswith(start), since=since)
    return call.params["text"]


async def test_russian_user_gets_russian_lang_switches_and_alerts_follow(fake: FakeBot, nursery, settings: Settings):
    fake.languages[ALICE] = "ru-RU"
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)

    # The command menu in Russian for Russian users, with the same command names.
    await fake.wait_for(lambda c: c.method == "setMyCommands" and c.params.get("language_code") == "ru")
    russian_menu = fake.commands_by_language["ru"]
    assert [c["command"] for c in russian_menu] == [c["command"] for c in fake.commands]
    assert all(CYRILLIC.search(c["description"]) for c in russian_menu)
    assert not any(CYRILLIC.search(c["description"]) for c in fake.commands)

    # Replies in the sender's language: ALICE in Russian, BOB (English Telegram) in English.
    assert (await say(fake, ALICE, "/hosts"))["text"] == "У вас пока нет хостов. /newkey NAME зарегистрирует хост."
    assert (await say(fake, BOB, "/hosts"))["text"] == "You have no hosts yet. /newkey NAME registers one."
    reply = (await say(fake, ALICE, "/newkey box1"))["text"]
    assert "Хост <b>box1</b> зарегистрирован" in reply
    assert "Нет такого хоста" in (await say(fake, ALICE, "/status ghost"))["text"]
    assert (await say(fake, ALICE, "/lang"))["text"].startswith("Язык: Русский (как в вашем Telegram)")
    assert read_db(settings, "SELECT chosen, seen FROM user_languages WHERE user_id = ?", ALICE) == [(None, "ru")]

    # ALICE shares box1 with BOB, whose Telegram speaks English.
    token = re.search(r"\?start=([\w-]+)", (await say(fake, ALICE, "/share box1 viewer"))["text"])[1]
    assert CYRILLIC.search((await say(fake, BOB, f"/start {token}"))["text"]) is None

    # An alert with no update to answer: said in the language of each recipient's last updates.
    secret = re.search(r"AGENT_SECRET=(\S+)", reply).group(1)
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=42.0))
    await ack_reaching(agent.ws, 1)
    since = len(fake.sent)
    assert await offline_alert(fake, server, clock, agent, "box1") == \
        "box1 пропал со связи (последний раз на связи 1 ч назад)"
    to_bob = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("chat_id") == BOB
                                 and c.params["text"].startswith("box1"), since=since)
    assert to_bob.params["text"] == "box1 is offline (last seen 1 h ago)"
    to_alice = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("chat_id") == ALICE
                                   and c.params["text"].startswith("box1"), since=since)
    assert "🔕 Тишина 1 ч" in str(to_alice.params["reply_markup"])  # the owner's buttons, in the owner's language

    # /lang en: English from now on, whatever Telegram says, and the next alert too.
    assert (await say(fake, ALICE, "/lang en"))["text"].startswith("Language: English (chosen with /lang")
    assert "box1" in (await say(fake, ALICE, "/hosts"))["text"]
    assert (await say(fake, ALICE, "/nosuch"))["text"].startswith("Unknown command /nosuch.")
    assert read_db(settings, "SELECT chosen, seen FROM user_languages WHERE user_id = ?", ALICE) == [("en", "ru")]
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(2, cpu=42.0))
    await ack_reaching(agent.ws, 2)
    back = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("chat_id") == ALICE
                               and "box1" in c.params["text"] and "online" in c.params["text"])
    assert back.params["text"].startswith("box1 is back online after 1 h")  # its reply: in English now
    assert await offline_alert(fake, server, clock, agent, "box1 is offline") == \
        "box1 is offline (last seen 1 h ago)"

    # A bad /lang says how, in the current language; /lang auto follows Telegram again.
    assert (await say(fake, ALICE, "/lang de"))["text"].startswith("Usage: /lang [en | ru | auto]")
    assert (await say(fake, ALICE, "/lang auto"))["text"].startswith("Язык: Русский")
    assert (await say(fake, ALICE, "/lang de"))["text"].startswith("Использование: /lang")
    assert read_db(settings, "SELECT chosen FROM user_languages WHERE user_id = ?", ALICE) == [(None,)]
    # Stopped as a user's server stops: cancelled by the test's nursery instead, the alert delivery would wait 5 s for
    # a writer cancelled with it to store the ids of the messages it had just sent.
    await server.aclose()
