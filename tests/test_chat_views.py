"""Command parsing and chat rendering: pure functions."""
from __future__ import annotations

import pytest

from mbot import store
from mbot.install import Endpoint
from mbot.service import NewKey
from mbot.telegram import commands, views
from mbot.telegram.commands import Command, UsageError
from mbot.telegram.views import Callback, decode_callback

NOW = 1_700_000_000.0


def host(**kw) -> store.Host:
    base = dict(id=7, name="box1", owner=1, key_id="0123456789abcdef", created=NOW, facts={"agent": "0.1.0",
                "os": "Linux 6.1", "cpu_count": 8, "interval": 5}, epoch=1, last_seq=3, last_ts=NOW, last_seen=NOW - 2,
                last_metrics={}, samples_count=3)
    base.update(kw)
    return store.Host(**base)


@pytest.mark.parametrize("text, expected", [
    ("/status", Command("status")),
    ("/status box1", Command("status", ("box1",))),
    ("/STATUS@mbot_bot box1", Command("status", ("box1",))),
    ("/newkey  my-pc ", Command("newkey", ("my-pc",))),
    ("/rename a b", Command("rename", ("a", "b"))),
    ("hello there", None),
    ("/", None),
    ("/status@other_bot", None),
])
def test_parse(text, expected):
    assert commands.parse(text, bot_username="mbot_bot") == expected


@pytest.mark.parametrize("text, message", [
    ("/newkey", "Usage: /newkey NAME"),
    ("/newkey a b", "Usage: /newkey NAME"),
    ("/rename onlyone", "Usage: /rename OLD NEW"),
    ("/status a b", "Usage: /status [NAME]"),
    ("/frobnicate", "Unknown command /frobnicate. /help"),
])
def test_usage_errors(text, message):
    with pytest.raises(UsageError) as error:
        commands.parse(text)
    assert str(error.value).startswith(message)


def test_callbacks_round_trip_and_reject_forgeries():
    for cb in (Callback("card", ("7",)), Callback("power", ("7", "reboot")), Callback("confirm", ("abc",)),
               Callback("revoke", ("7", "wipe")), Callback("delete")):
        assert decode_callback(cb.encode()) == cb
    for forged in ("power:7:format-disk", "card:x", "card", "refresh:1:2", "x" * 65, "", "revoke:7:maybe"):
        assert decode_callback(forged) is None
    with pytest.raises(ValueError):
        Callback("confirm", ("n" * 70,)).encode()


def test_human_numbers():
    assert views.human_bytes(512) == "512 B"
    assert views.human_bytes(1536) == "1.5 KiB"
    assert views.human_bytes(16 * 2**30) == "16.0 GiB"
    assert views.ago(1000.0 - 3600, 1000.0) == "1 h ago" and views.ago(None, 1.0) == "never"


def test_card_shows_everything_and_escapes_names():
    metrics = {"cpu": 12.4, "load": [0.5, 0.4, 0.3], "ram": {"used": 4 * 2**30, "total": 16 * 2**30},
               "swap": {"used": 0, "total": 2 * 2**30}, "disks": {"/": {"used": 50 * 2**30, "total": 100 * 2**30}},
               "disk_io": {"read": 2048, "write": 0}, "net": {"eth0": {"rx": 1024, "tx": 512}},
               "temps": {"cpu": 54.2}, "uptime": 3 * 86400 + 4 * 3600, "procs": 231,
               "gpus": [{"name": "H100", "util": 87, "vram_used": 2**30, "vram_total": 80 * 2**30, "temp": 61,
                         "power": 312.5}]}
    text = views.host_card(host(name="<b>", last_metrics=metrics), NOW)
    assert "&lt;b&gt;" in text and "<b><b>" not in text
    for expected in ("🟢 online", "last seen 2 s ago", "CPU 12 %", "load 0.50 0.40 0.30", "(8 cores)",
                     "RAM 4.0 GiB / 16.0 GiB (25 %)", "Disk / 50.0 GiB / 100.0 GiB (50 %)", "Net ↓ 1.0 KiB/s",
                     "Temp cpu 54 °C", "H100 #0 · 87 % · VRAM 1.0 GiB / 80.0 GiB (1 %) · 61 °C · 312 W",
                     "Uptime 3 d 4 h", "231 processes", "Agent 0.1.0 · Linux 6.1"):
        assert expected in text, expected
    offline = views.host_card(host(last_seen=NOW - 3600, last_metrics=metrics), NOW)
    assert "🔴 offline" in offline and "1 h ago" in offline


def test_keyboards_carry_ids_not_secrets():
    key = NewKey(host_id=7, name="box1", key_id="0123456789abcdef", secret="S3CRET")
    text, kb = views.new_key(key, Endpoint("mon.example.org", 8000, "ab" * 32, "A" * 43 + "="))
    assert "AGENT_SECRET=S3CRET" in text and "AGENT_SERVER_IP=mon.example.org" in text
    assert "S3CRET" not in str(kb)
    _, card_kb = views.host_card(host(), NOW), views.card_keyboard(host())
    datas = [b["callback_data"] for row in card_kb["inline_keyboard"] for b in row]
    assert datas == ["refresh:7", "info:7", "stability:7", "speedtest:7", "power:7:reboot", "power:7:shutdown"]


def test_card_says_when_samples_were_lost():
    text = views.host_card(host(dropped=12, last_metrics={"cpu": 1.0}), NOW)
    assert "12 samples dropped during an outage" in text
    assert "dropped" not in views.host_card(host(last_metrics={"cpu": 1.0}), NOW)
