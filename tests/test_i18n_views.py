"""Every view the chat shows, rendered in each language with hostile names and long values: HTML stays well formed
and escaped, Telegram's limits hold, nothing is left unformatted, and the Russian render is Russian."""
from __future__ import annotations

import html.parser
import re
from typing import Any, Callable

import pytest

from mbot import checks, i18n, plotspec, quiet, service, speedtest, stability, store
from mbot.alerts import (AlertEngine, AlertRule, BackOnline, Firing, MuteEnded, Offline, OfflineRule, PowerBack,
                         RebootOverdue, Reminder, Resolved, ServerDown)
from mbot.checks import CheckError, CheckSpec
from mbot.install import Endpoint
from mbot.model import AlertMessage, NewKey, StoredSnapshot
from mbot.telegram import alert_commands, alert_text, commands, views
from mbot.telegram.alert_commands import AlertUsageError
from mbot.telegram.commands import UsageError

NOW = 1_700_000_000.0
EVIL = "<b>&\"'x"  # a host name as hostile as the chat can be handed (agents' texts are as bad or worse)
LONG = "é" * 3000  # long values: a command line, an OS string, a label
TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
                 "blockquote", "tg-emoji"}
TEXT_LIMIT, CAPTION_LIMIT, CALLBACK_LIMIT = 4096, 1024, 64
CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)
# Common English words: one of them in a Russian render (outside code and the test's own values) is a text that
# escaped the catalogue.
ENGLISH = re.compile(r"\b(the|is|are|of|and|to|not|no|with|for|has|was|its|from|this|after|when|e\.g)\b")
UNFORMATTED = re.compile(r"\{[a-z_]+(![rsa])?(:[^}]*)?\}")


def host(**kw: Any) -> store.Host:
    metrics = {"cpu": 12.4, "load": [0.5, 0.4, 0.3], "ram": {"used": 4 * 2**30, "total": 16 * 2**30},
               "swap": {"used": 0, "total": 2 * 2**30},
               "disks": {f"/{EVIL}{i}": {"used": 50 * 2**30, "total": 100 * 2**30} for i in range(3)},
               "disk_io": {"read": 2048, "write": 0}, "net": {"eth0": {"rx": 1024, "tx": 512}},
               "temps": {EVIL: 54.2}, "uptime": 3 * 86400 + 4 * 3600, "procs": 231,
               "gpus": [{"name": EVIL, "util": 87, "vram_used": 2**30, "vram_total": 80 * 2**30, "temp": 61,
                         "power": 312.5}],
               "link": {"rtt": 12.5, "jitter": 0.42, "loss": 1.5},
               "checks": {EVIL: {"up": 0.0}, "web": {"up": 1.0, "cert": 5.0}},
               "containers": {EVIL: {"down": 1.0}, "db": {"down": 0.0}}}
    base = dict(id=7, name=EVIL, owner=1, key_id="0123456789abcdef", created=NOW,
                facts={"agent": "0.1.0", "os": LONG, "cpu_count": 8, "interval": 5, "capabilities": ["checks"]},
                epoch=1, last_seq=3, last_ts=NOW, last_seen=NOW - 2, last_metrics=metrics, samples_count=3,
                dropped=3, rejected=21)
    base.update(kw)
    return store.Host(**base)


PROCESSES = [{"pid": 100 + i, "name": EVIL * 10, "user": EVIL, "cpu": 99.5 - i, "rss": 2**30 + i, "vram": 2**20 * i,
              "cmd": f"{EVIL} {LONG}"} for i in range(45)]
CONTAINERS = ([{"name": f"{EVIL}{i}", "image": LONG[:200], "state": state, "health": "", "restarts": i,
                "cpu": 1.5, "mem": 2**28} for i, state in enumerate(["exited", "running", "restarting"] * 40)]
              + [{"name": "web", "image": "nginx", "state": "running", "health": "unhealthy", "restarts": 1,
                  "cpu": None, "mem": None}])
INVENTORY = {"os": LONG, "kernel": "6.1", "arch": "x86_64", "virt": "none",
             "cpu": {"model": EVIL, "cores": 8, "threads": 16}, "mem_total": 16 * 2**30, "swap_total": 2**31,
             "disks": [{"mount": f"/{EVIL}{i}", "fs": "ext4", "device": "/dev/sda", "total": 2**40} for i in range(20)],
             "nics": [{"name": EVIL, "up": True, "speed": 1000, "addrs": ["10.0.0.1"] * 6, "mac": "aa:bb"},
                      {"name": "eth1", "up": False}],
             "gpus": [{"name": EVIL, "vram": 80 * 2**30, "driver": "550"}], "boot_time": NOW - 86400, "agent": "0.2"}
SERVICES = [{"unit": f"{EVIL}.service", "state": "failed", "sub": "failed", "since": NOW - 600},
            {"unit": "nginx.service", "state": "activating", "sub": "start", "since": NOW - 30}]


def _rule(metric: str, threshold: float = 90.0, **kw: Any) -> AlertRule:
    return AlertRule(7, metric, threshold, **kw)


def alert_events() -> dict[str, Any]:
    cpu, container = _rule("cpu", for_s=300), _rule("container:web", 0.5)
    service_rule = _rule("service:nginx.service", 0.5, below=True)
    fire = Firing(cpu, 7, "cpu", 97.5, NOW - 400, NOW)
    return {
        "firing": fire,
        "firing container": Firing(container, 7, "container_down:web", 1.0, NOW - 60, NOW),
        "firing service": Firing(service_rule, 7, "service:nginx.service", -1.0, NOW - 60, NOW),
        "resolved": Resolved(cpu, 7, "cpu", 40.0, NOW - 4000, 3700, worst=99.9),
        "resolved gone": Resolved(cpu, 7, "cpu", None, NOW - 4000, 3700),
        "resolved container": Resolved(container, 7, "container_down:web", 0.0, NOW - 60, 60, worst=1.0),
        "reminder": Reminder(cpu, 7, "cpu", 95.0, NOW - 7200, NOW),
        "reminder container": Reminder(container, 7, "container_down:web", 2.0, NOW - 7200, NOW),
        "offline": Offline(7, NOW - 300, NOW),
        "back online": BackOnline(7, 4000, NOW),
        "power back": PowerBack(7, "reboot", NOW - 90, NOW, NOW - 86400 - 60),
        "shutdown back": PowerBack(7, "shutdown", NOW - 9000, NOW, None),
        "reboot overdue": RebootOverdue(7, NOW - 900, NOW - 890, NOW),
        "mute ended": MuteEnded(7, NOW, (fire,), NOW - 600),
        "mute ended quiet": MuteEnded(7, NOW, ()),
    }


def renders() -> dict[str, tuple[str, str, Any]]:
    """name -> (kind, text, keyboard) for every view, in the current language. kind: text or caption."""
    h = host()
    bare = host(last_metrics={}, dropped=0, rejected=0, facts={})
    procs = StoredSnapshot(7, "processes", 1, NOW, NOW - 900, PROCESSES)
    endpoint = Endpoint("203.0.113.7", 8443, "ab" * 32, "pin=", host_guessed=True)
    key = NewKey(7, EVIL, "0123456789abcdef", "s" * 43)
    out: dict[str, tuple[str, str, Any]] = {}

    def text(name: str, value: str | tuple[str, Any]) -> None:
        out[name] = ("text", *value) if isinstance(value, tuple) else ("text", value, None)

    text("card", (views.host_card(h, NOW, procs), views.card_keyboard(h, ["cpu", "ram", "gpu0", "disk:/"], True)))
    text("card bare", views.host_card(bare, NOW + 600))
    text("card rebooting", views.host_card(host(last_seen=NOW - 900), NOW, power="reboot"))
    text("hosts", views.host_list([h, bare], NOW, {}, recommended="0.9.0", update_line="curl ... --update"))
    text("hosts none", views.host_list([], NOW))
    text("status", views.summary([h, host(id=8, last_seen=NOW - 900)], NOW, {8: "shutdown"}))
    text("help", views.help_text(admin=True))
    text("welcome", views.welcome("admin"))
    text("welcome user", views.welcome("user"))
    text("language", views.language_text(i18n.current(), chosen=True))
    text("invite", views.invite("c" * 22, f"https://t.me/{EVIL}?start=x", 1, 48))
    text("invite no link", views.invite("c" * 22, None, 1, 48))
    text("slow down", views.slow_down("/newkey", 10, 60, 42))
    text("top", views.processes_view(h, procs, NOW))
    text("top none", views.processes_view(h, None, NOW))
    text("captured processes", views.captured_processes(h, AlertMessage(3, 7, "cpu", "cpu", NOW - 60, PROCESSES,
                                                                         1, 2, False, None), NOW))
    text("containers", views.containers_view(h, CONTAINERS, NOW - 30, NOW))
    text("containers none", views.containers_view(h, None, None, NOW))
    text("info", views.inventory_view(h, NOW, SERVICES))
    text("info none", views.inventory_view(host(facts={"inventory": INVENTORY}), NOW, []))
    text("info empty", views.inventory_view(bare, NOW, None))
    specs = [CheckSpec(1, 7, EVIL, f"https://{EVIL}.example/{LONG[:100]}", 300.0),
             CheckSpec(2, 7, "web", "tcp://db:5432", 60.0)]
    snapshot = StoredSnapshot(7, "checks", 1, NOW, NOW, [{"name": EVIL, "state": "down", "status": 500,
                                                          "error": LONG[:200]},
                                                         {"name": "web", "state": "up", "ms": 35, "cert_days": 41}])
    text("checks", views.checks_view(h, specs, snapshot))
    text("checks none", views.checks_view(h, [], None))
    text("new key", views.new_key(key, endpoint, 1))
    name, _content, caption, keyboard = views.agent_env(key, endpoint, 1)
    out["agent env"] = ("caption", caption, keyboard)
    out["agent file"] = ("caption", i18n._(views.AGENT_CAPTION), None)
    text("power question", views.power_question(h, "reboot", "n" * 12, 1))
    text("shutdown question", views.power_question(h, "shutdown", "n" * 12, 1))
    text("power started", views.power_started(EVIL, "reboot"))
    text("shutdown started", views.power_started(EVIL, "shutdown"))
    text("revoke question", views.revoke_question(h))
    text("share link", views.share_link(h, "operator", f"https://t.me/{EVIL}?start=x", "c" * 22, 1, 24))
    text("share link no link", views.share_link(h, "viewer", None, "c" * 22, 1, 24))
    text("shares", views.shares_view(h, [(2, "viewer", EVIL, EVIL), (3, "operator", None, None)]))
    text("shares none", views.shares_view(h, []))
    text("shared with you", views.shared_with_you(h, "viewer"))
    text("linkkey", views.linkkey())
    text("hosts shared", views.host_list([h], NOW, {}, roles={7: "viewer"}))
    text("card viewer", (views.host_card(h, NOW), views.card_keyboard(h, ["cpu"], True, role="viewer")))
    engine = AlertEngine(repeat=3600.0, now=NOW - 1000)
    for rule in (_rule("cpu", for_s=300), _rule("disk", 95.0), _rule("container:web", 0.5),
                 _rule("service:nginx.service", 0.5, below=True), OfflineRule(7, 120.0)):
        engine.set_rule(rule)
    engine.host_seen(7, NOW - 1000, 5.0)
    engine.observe(7, NOW - 900, {"cpu": 99.0, f"disk:/{EVIL}": 20.0}, NOW - 900)
    engine.observe(7, NOW - 300, {"cpu": 99.0, f"disk:/{EVIL}": 20.0}, NOW - 300)
    engine.mute(7, NOW + 600)
    text("alerts", views.alerts_overview([h], engine, NOW))
    text("alerts none", views.alerts_overview([], engine, NOW))
    for label, event in alert_events().items():
        said = alert_text.describe(event, EVIL)
        out[f"alert {label}"] = ("caption" if isinstance(event, Firing) else "text", views.e(said),
                                 views.alert_keyboard(7, 3, getattr(getattr(event, "rule", None), "metric", "offline"),
                                                      chart=True, procs=True, live=True))
        if isinstance(event, (Resolved, BackOnline)):
            text(f"alert {label} ended", views.e(alert_text.ended(event, EVIL)))
    text("ended while muted", views.e(alert_text.ended_while_muted(EVIL, "cpu")))
    text("offline ended while muted", views.e(alert_text.ended_while_muted(EVIL, None)))
    storm = [Firing(_rule("containers", 0.5), 7, f"container_down:{EVIL}{i}", 1.0, NOW, NOW) for i in range(40)]
    text("alert storm", views.e(alert_text.describe_group(storm, EVIL)))
    down = ServerDown(NOW - 86400, NOW, (1, 2), (3,), NOW)
    text("outage", views.e(alert_text.outage_text(down, ["a", "b"], [EVIL], alert_text.timezone.utc)))
    text("outage all back", views.e(alert_text.outage_text(down, ["a", "b"], [], alert_text.timezone.utc)))
    text("outage none back", views.e(alert_text.outage_text(down, [], ["a", EVIL], alert_text.timezone.utc)))
    run = stability.StabilityRun(stability.StabilitySpec(EVIL, 0.01, 1.0), start=0.0)
    for i in range(50):
        run.slot(i)
        if i % 5:
            run.answered(i, i * 0.01, i * 0.01 + 0.012)
    text("stability progress", views.e(run.progress(0.5)))
    run.end(1.0)
    out["stability caption"] = ("caption", views.e(stability.caption(EVIL, run.spec, run.figures())), None)
    text("speed test", views.e(speedtest.reply(EVIL, speedtest.Throughput("down", 50_000_000, 10.0), None)))
    return out


def errors() -> dict[str, str]:
    """Every command's errors, as the bot sends them (escaped)."""
    out: dict[str, str] = {}

    def caught(name: str, call: Callable[[], object]) -> None:
        try:
            call()
        except (UsageError, AlertUsageError, plotspec.PlotUsageError, stability.StabilityUsageError, CheckError,
                quiet.QuietUsageError, service.ServiceError, ValueError) as exc:
            out[name] = views.e(str(exc))
        else:
            raise AssertionError(f"{name}: no error")

    caught("unknown command", lambda: commands.parse("/frobnicate"))
    caught("usage", lambda: commands.parse("/rename a"))
    for args in ([], ["box1", "nosuch"], ["box1", "cpu"], ["box1", "cpu", "abc"], ["box1", "cpu", "900"],
                 ["box1", "cpu", "90", "forever"], ["box1", "offline", "1", "2"], ["box1", "service:x", "3"],
                 ["box1", "containers"], ["box1", "cpu", "90", "5m", "x"]):
        caught(f"setalert {args}", lambda args=args: alert_commands.parse_setalert(args))
    caught("delalert", lambda: alert_commands.parse_delalert(["box1"]))
    caught("mute", lambda: alert_commands.parse_mute(["box1"]))
    caught("mute long", lambda: alert_commands.parse_mute(["box1", "9999d"]))
    caught("unmute", lambda: alert_commands.parse_unmute([]))
    for args in ([], ["box1"], ["box1", "nosuch", "1h"], ["box1", "cpu"], ["box1", "cpu", "9y"], ["box1", "cpu", "1h", "0"],
                 ["box1", "cpu", "1h", "x"], ["box1", "cpu", "1h", "gib"]):
        caught(f"plot {args}", lambda args=args: plotspec.parse_plot(args))
    caught("plot host", lambda: plotspec.resolve_metrics(["gpu"], ["cpu"]))
    caught("plot unit", lambda: plotspec.resolve_metrics(["cpu"], ["cpu"], "gib"))
    caught("plot axes", lambda: plotspec.resolve_metrics(["cpu", "net", "temp"], ["cpu", "net_rx", "temp:x"]))
    for args in ([], ["box1", "x"], ["box1", "5s"], ["box1", "10ms", "x"], ["box1", "10ms", "1h"]):
        caught(f"stability {args}", lambda args=args: stability.parse_stability(args))
    for args in (["box1"], ["box1", "ftp://x"], ["box1", "https://u:p@x"], ["box1", "tcp://x"], ["box1", "https://x", "1s"]):
        caught(f"check {args}", lambda args=args: checks.parse_command(args))
    caught("quiet", lambda: quiet.parse_quiet(["25:00"]))
    caught("quiet empty", lambda: quiet.parse_quiet(["10-10"]))
    caught("host name", lambda: service.check_name(EVIL))
    caught("no such host", lambda: (_ for _ in ()).throw(service.NoSuchHost()))
    caught("host limit", lambda: (_ for _ in ()).throw(service.HostLimit(3, 3)))
    budget = stability.StabilityBudget(max_rate=10)
    budget.take(1, 0.2)
    out["stability refused"] = views.e(budget.refusal(1, 0.2) or "")
    out["stability budget"] = views.e(budget.refusal(2, 0.01) or "")
    return out


def _all(language: str) -> dict[str, tuple[str, str, Any]]:
    with i18n.speaking(language):
        return {**renders(), **{f"error {k}": ("text", v, None) for k, v in errors().items()}}


class _TagChecker(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TELEGRAM_TAGS:
            self.problems.append(f"tag <{tag}> Telegram does not allow")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"</{tag}> closes nothing open")

    def handle_data(self, data: str) -> None:
        self.text += data


def _check(name: str, kind: str, text: str, keyboard: Any) -> str:
    """The problems of one render (empty when none); returns them for one assertion per language."""
    parser = _TagChecker()
    parser.feed(text)
    parser.close()
    problems = parser.problems + [f"<{tag}> left open" for tag in parser.open]
    limit = CAPTION_LIMIT if kind == "caption" else TEXT_LIMIT
    if len(parser.text) > limit:  # Telegram counts the text after entities are parsed
        problems.append(f"{len(parser.text)} characters, over {limit}")
    if UNFORMATTED.search(text):
        problems.append(f"unformatted field {UNFORMATTED.search(text)[0]}")  # type: ignore[index]
    if EVIL in parser.text.replace("\n", "") and EVIL not in text:
        pass  # the name shown, escaped: as it should be
    if "<b>&" in text.replace("<b>&lt;", ""):
        problems.append("the hostile name went out unescaped")
    for row in (keyboard or {}).get("inline_keyboard", []):
        for button in row:
            if len(button["callback_data"].encode()) > CALLBACK_LIMIT:
                problems.append(f"callback data over {CALLBACK_LIMIT} bytes: {button['callback_data']!r}")
    return "; ".join(f"{name}: {p}" for p in problems)


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_view_is_well_formed_escaped_and_within_telegrams_limits(language: str) -> None:
    found = [problem for name, (kind, text, keyboard) in _all(language).items()
             if (problem := _check(name, kind, text, keyboard))]
    assert not found, "\n".join(found)


def test_the_russian_views_are_russian_and_the_english_ones_english() -> None:
    english, russian = _all("en"), _all("ru")
    assert english.keys() == russian.keys()
    untranslated = [name for name in english if russian[name][1] == english[name][1]
                    or not CYRILLIC.search(russian[name][1])]
    assert not untranslated, "not in Russian: " + ", ".join(untranslated)
    english_left = {name: found for name, (_, text, _kb) in russian.items()
                    if (found := ENGLISH.findall(re.sub(r"<(code|pre)>.*?</\1>", "", text, flags=re.S)))}
    assert not english_left, english_left
    cyrillic_in_english = [name for name, (_, text, _kb) in english.items() if CYRILLIC.search(text)]
    assert not cyrillic_in_english
    buttons = [b["text"] for _, _, keyboard in russian.values() for row in (keyboard or {}).get("inline_keyboard", [])
               for b in row]
    english_buttons = [b["text"] for _, _, keyboard in english.values()
                       for row in (keyboard or {}).get("inline_keyboard", []) for b in row]
    assert len(buttons) == len(english_buttons)
    # Buttons with words are translated; a button that is a host's name or a span (1h, 24h) stays as it is.
    same = {b for b, e in zip(buttons, english_buttons) if b == e and re.search("[a-z]{3}", e) and EVIL not in e}
    assert not same, same


def test_formats_follow_the_language() -> None:
    h = host()
    with i18n.speaking("ru"):
        card = views.host_card(h, NOW)
        assert "нагрузка 0,50 0,40 0,30" in card and "ОЗУ 4,0 GiB / 16,0 GiB (25 %)" in card
        assert "(8 ядер)" in card and "Аптайм 3 д 4 ч" in card and "231 процесс" in card
        assert alert_text.describe(PowerBack(7, "reboot", NOW - 125, NOW, NOW - 86400), EVIL).endswith(
            "вернулся через 2 мин 5 с (загружен в 13 ноя 22:13:20)")
    assert views.host_card(h, NOW).count("load 0.50 0.40 0.30") == 1
    assert alert_text.describe(PowerBack(7, "reboot", NOW - 125, NOW, NOW - 86400), "b").endswith(
        "is back after 2 min 5 s (booted Nov 13 22:13:20)")
