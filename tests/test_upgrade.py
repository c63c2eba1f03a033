"""A database made by the first release (tests/fixtures/v1.sqlite3, made by that code: make_v1_database.py) opens
with today's code, migrates, and serves the same hosts, keys, alert rules and history; one from a newer mbot is
refused in one line without being touched."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path


from helpers import ROOT, ack_reaching, certificate, hello_frame, make_settings, open_tls, read_db, sample_frame, upgrade
from mbot import alerting, app, cli, history, store
from mbot.alerts import AlertRule, OfflineRule
from mbot.model import secret_hash
from mbot.rollup import DEFAULT_TIERS

FIXTURE = ROOT / "tests" / "fixtures" / "v1.sqlite3"
SECRETS = json.loads((ROOT / "tests" / "fixtures" / "v1.json").read_text())
BASE = 1_790_000_000.0  # when the fixture's samples end (make_v1_database.py)


def first_release(tmp_path: Path):
    settings = make_settings(tmp_path / "data")
    shutil.copyfile(FIXTURE, settings.db_path)
    return settings


def test_the_first_release_database_migrates_and_keeps_everything(tmp_path):
    settings = first_release(tmp_path)
    conn = store.connect(settings.db_path)  # migrates
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        for name, info in SECRETS.items():
            host = store.host_by_secret_hash(conn, secret_hash(info["secret"]))
            assert host is not None and (host.id, host.name, host.owner) == (info["host_id"], name, 42)
            assert host.samples_count == 120 and host.last_seq == 120
        rules = alerting.load_rules(conn)
        box1, box2 = SECRETS["box1"]["host_id"], SECRETS["box2"]["host_id"]
        assert AlertRule(box1, "cpu", 90.0, for_s=300.0) in rules
        assert any(isinstance(r, OfflineRule) and r.host_id == box2 and r.delay == 120.0 for r in rules)
        raw, minute = DEFAULT_TIERS[0], DEFAULT_TIERS[1]
        points = history.load(conn, box1, ["cpu", "ram"], BASE - 7300, BASE, raw)
        assert [p.avg for p in points["cpu"]] == [float(i % 100) for i in range(120)]
        assert len(points["ram"]) == 120
        rolled = history.load(conn, box1, ["cpu"], BASE - 7300, BASE, minute)
        assert len(rolled["cpu"]) == 120 and rolled["cpu"][5].avg == 5.0
        assert store.intact(conn)
    finally:
        conn.close()


async def test_a_server_on_the_first_release_database_takes_its_agents(tmp_path, nursery):
    settings = first_release(tmp_path)
    cert = certificate(settings)
    server = await nursery.start(lambda task_status: app.serve(settings, cert, handle_signals=False,
                                                               task_status=task_status))
    ws = await upgrade(nursery, await open_tls(server.port), SECRETS["box1"]["secret"])  # the old key
    await ws.send_message(hello_frame(epoch=2))
    await ws.get_message()
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    await ws.aclose()
    await server.aclose()
    assert read_db(settings, "SELECT samples_count FROM hosts WHERE name = 'box1'") == [(121,)]


def test_a_database_from_a_newer_mbot_is_refused_in_one_line_and_left_alone(tmp_path, monkeypatch, capsys):
    settings = first_release(tmp_path)
    conn = sqlite3.connect(settings.db_path)
    conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = settings.db_path.read_bytes()
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    assert cli.main(["hosts"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer than this mbot" in err
    assert settings.db_path.read_bytes() == before


# --- agents older than the server's ----------------------------------------------------------------------------


def test_the_server_recommends_the_agent_it_ships_and_marks_older_ones(tmp_path, monkeypatch, capsys):
    from mbot import install
    from mbot.telegram import views

    shipped = install.agent_version(install.AGENT_FILE.read_bytes())
    assert shipped and install.older("0.1.0", shipped) and not install.older(shipped, shipped)
    assert not install.older("test", shipped) and not install.older(None, shipped)  # unparsable: not called old
    assert install.older("0.9.9", "0.10.0") and not install.older("0.10.0", "0.9.9")  # numbers, not text

    settings = first_release(tmp_path)  # its hosts said agent 0.1.0 in their hellos
    conn = store.connect(settings.db_path)
    hosts = store.list_hosts(conn, 42)
    conn.close()
    text, _ = views.host_list(hosts, BASE, recommended=shipped, update_line="curl ... | sudo sh -s -- --update")
    assert text.count("⬆️ agent 0.1.0") == 2 and "<code>curl ... | sudo sh -s -- --update</code>" in text
    assert "⬆️" not in views.host_list(hosts, BASE, recommended="0.1.0")[0]

    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    assert cli.main(["hosts"]) == 0
    out = capsys.readouterr().out
    assert f"agent 0.1.0 is older than {shipped}" in out and "-- --update" in out
