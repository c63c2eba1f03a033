"""Storms folded, the pure part (mbot/telegram/alert_fold.py): which alerts wait for each other, and what one
message for many of them says."""
from __future__ import annotations

from datetime import timezone

from hypothesis import given, strategies as st

from mbot.alerts import AlertRule, Firing, Offline
from mbot.i18n import speaking
from mbot.telegram import views
from mbot.telegram.alert_fold import BUTTONS, Batches, Fold, ends_text, head, lost_contact

T0 = 1_700_000_000.0  # 22:13:20 UTC


def test_a_batch_is_due_once_the_wait_after_its_first_item_is_over():
    batches: Batches[int, str] = Batches(30.0)
    batches.add(1, "a", T0)
    batches.add(1, "b", T0 + 29)  # within the wait of the first: the same message
    batches.add(2, "x", T0 + 10)  # another chat: its own batch, its own deadline
    assert batches.next_deadline() == T0 + 30
    assert batches.due(T0 + 29.9) == []
    assert batches.due(T0 + 30) == [(1, ["a", "b"])]
    batches.add(1, "c", T0 + 31)  # after the first batch went: a new one, not a late member of the old
    assert batches.next_deadline() == T0 + 40
    assert batches.due(T0 + 61) == [(2, ["x"]), (1, ["c"])]  # oldest deadline first
    assert batches.next_deadline() is None and batches.due(T0 + 1000) == []


def test_take_sends_a_batch_early_and_only_that_one():
    batches: Batches[int, str] = Batches(30.0)
    batches.add(1, "a", T0)
    batches.add(2, "b", T0)
    assert batches.take(1) == ["a"] and batches.take(1) == []
    assert batches.groups() == [2] and list(batches.items(2)) == ["b"] and list(batches.items(1)) == []


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 600, allow_nan=False)), max_size=60),
       st.floats(0.5, 120), st.lists(st.floats(0, 800, allow_nan=False), max_size=10))
def test_every_item_goes_once_in_order_and_waits_at_most_the_wait(arrivals, wait, checks):
    """Whatever the arrivals and however often the deliverer looks: each item comes out exactly once, with the
    items of its chat in arrival order, never before it arrived, and never held longer than the wait; the items of
    one message all arrived within the wait of its first."""
    arrivals = sorted(arrivals, key=lambda a: a[1])
    batches: Batches[int, tuple[int, float]] = Batches(wait)
    out: list[tuple[float, int, list[tuple[int, float]]]] = []
    looks = sorted(checks)

    def look_until(now: float) -> None:
        """The deliverer wakes at each deadline, and at the extra looks (other events woke it)."""
        while True:
            times = [t for t in (batches.next_deadline(), looks[0] if looks else None) if t is not None and t <= now]
            if not times:
                return
            at = min(times)
            if looks and looks[0] == at:
                looks.pop(0)
            out.extend((at, chat, items) for chat, items in batches.due(at))

    for n, (chat, at) in enumerate(arrivals):
        look_until(at)
        batches.add(chat, (n, at), at)
    look_until(10_000)
    sent = [item for _, _, items in out for item in items]
    assert sorted(sent) == [(n, at) for n, (_, at) in enumerate(arrivals)]
    for chat in {c for c, _ in arrivals}:
        order = [n for _, c, items in out if c == chat for n, _ in items]
        assert order == sorted(order)
    for when, _, items in out:
        first = items[0][1]
        assert all(first <= at <= first + wait for _, at in items)
        assert first <= when <= first + wait + 1e-6


def offline(host_id: int, since: float = T0) -> Offline:
    return Offline(host_id, since, since + 30)


def firing(host_id: int) -> Firing:
    return Firing(AlertRule(host_id, "cpu", 90.0, 0.0), host_id, "cpu", 97.0, T0, T0 + 60)


def test_most_hosts_losing_contact_at_once_is_said_to_be_the_servers_side():
    events = [offline(i, T0 + i) for i in range(1, 8)]
    assert head(events, 9, timezone.utc) == ("⚠️ 7 of 9 hosts lost contact at 22:13: probably the server's network "
                                             "or the server itself")
    assert lost_contact(7, 9) and lost_contact(2, 2) and lost_contact(5, 9)
    assert not lost_contact(4, 9) and not lost_contact(1, 1)  # one host is news about that host
    # Fewer than half, or not offline: the alerts are the news.
    assert head([offline(1), offline(2)], 9, timezone.utc) == "⚠️ 2 alerts at 22:13"
    assert head([firing(1), firing(2), offline(3)], 3, timezone.utc) == "⚠️ 3 alerts at 22:13"
    with speaking("ru"):
        assert head(events, 9, timezone.utc).startswith("⚠️ 7 из 9 хостов потеряли связь в 22:13")
        assert head([firing(1), firing(2)], 3, timezone.utc) == "⚠️ 2 оповещения в 22:14"  # when they fired


def test_a_folded_message_ends_line_by_line_and_buttons_open_each_hosts_card():
    fold = Fold("head", [[10, "box1 is offline", None], [11, "box2 is offline", None]], [(1, "box1"), (2, "box2")])
    assert fold.text() == "head\n• box1 is offline\n• box2 is offline"
    fold.end(11, "✅ box2 was offline for 2 min; back online")
    assert fold.open()
    assert fold.text() == "head\n• box1 is offline\n✅ box2 was offline for 2 min; back online"
    fold.end(10, "✅ box1 back")
    assert not fold.open()
    assert [b["callback_data"] for row in fold.keyboard()["inline_keyboard"] for b in row] == ["card:1", "card:2"]
    assert [b["text"] for row in fold.keyboard()["inline_keyboard"] for b in row] == ["box1", "box2"]
    assert Fold.from_dict(fold.as_dict(), 5) == Fold(fold.head, fold.lines, fold.hosts, 5)


@given(st.lists(st.text(st.characters(blacklist_characters="\n"), min_size=1, max_size=300), min_size=1,
                max_size=400), st.integers(1, 400))
def test_a_folded_message_fits_telegram_whatever_it_lists(lines, hosts):
    fold = Fold("⚠️ head", [[n, line, None] for n, line in enumerate(lines)],
                [(n, f"host{n}") for n in range(hosts)])
    text = fold.text()
    assert len(text) <= 4096
    shown = text.count("\n• ") + text.startswith("• ")
    if shown < len(lines):
        assert text.endswith(f"… and {len(lines) - shown} more")
    rows = fold.keyboard()["inline_keyboard"]
    assert sum(map(len, rows)) == min(hosts, BUTTONS) and all(len(row) <= 3 for row in rows)
    assert all(len(b["callback_data"].encode()) <= views.CALLBACK_LIMIT for row in rows for b in row)
    assert len(ends_text(lines)) <= 4096
