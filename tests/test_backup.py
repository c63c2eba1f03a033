"""Backups that restore: `python -m mbot backup|restore` and the server's own (MBOT_BACKUP_DIR)."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import trio

from helpers import ack_reaching, add_host, certificate, hello_frame, make_settings, open_tls, read_db, sample_frame, upgrade
from mbot import app, backup, cli, metrics, store


def run_cli(monkeypatch, capsys, data: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MBOT_DATA_DIR", str(data))
    return cli_here(capsys, *args)


def cli_here(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m mbot ARGS` in this process (in a worker thread while a server runs: the environment is set
    beforehand, never from the thread)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


async def stream(nursery, server, secret: str, first: int, count: int):
    ws = await upgrade(nursery, await open_tls(server.port), secret)
    await ws.send_message(hello_frame())
    await ws.get_message()
    for seq in range(first, first + count):
        await ws.send_message(sample_frame(seq))
    await ack_reaching(ws, first + count - 1)
    return ws


async def test_a_backup_taken_while_the_server_ingests_restores_a_working_server(tmp_path, nursery, monkeypatch,
                                                                                  capsys):
    data = tmp_path / "data"
    settings = make_settings(data)
    cert = certificate(settings)
    key = add_host(settings, "box1")
    monkeypatch.setenv("MBOT_DATA_DIR", str(data))
    running = cli._server_lock(data, exclusive=False)  # what `python -m mbot` holds while it serves
    assert running.__enter__()
    server = await nursery.start(lambda task_status: app.serve(settings, cert, handle_signals=False,
                                                               task_status=task_status))
    ws = await stream(nursery, server, key.secret, 1, 20)

    archive = tmp_path / "b.tar.gz"
    code, out, _ = await trio.to_thread.run_sync(lambda: cli_here(capsys, "backup", str(archive)))
    assert code == 0 and "mbot.sqlite3" in out and "cert.pem" in out and "key.pem" in out and "1 hosts" in out
    assert archive.stat().st_mode & 0o777 == 0o600
    await ws.send_message(sample_frame(21))  # the server went on ingesting meanwhile
    await ack_reaching(ws, 21)

    # Refused while the server runs on that directory.
    code, _, err = await trio.to_thread.run_sync(lambda: cli_here(capsys, "restore", str(archive)))
    assert code == 1 and "a server is running" in err
    await ws.aclose()
    await server.aclose()
    running.__exit__(None, None, None)

    # Into a new data directory: the same certificate, the old secret works, the history is there.
    fresh = tmp_path / "fresh"
    code, out, err = run_cli(monkeypatch, capsys, fresh, "restore", str(archive))
    assert code == 0, err
    assert cert.fingerprint in out
    restored = make_settings(fresh)
    assert certificate(restored).fingerprint == cert.fingerprint
    assert read_db(restored, "SELECT count(*) FROM samples") == [(20,)]
    again = await nursery.start(lambda task_status: app.serve(restored, certificate(restored), handle_signals=False,
                                                              task_status=task_status))
    ws = await stream(nursery, again, key.secret, 22, 1)  # the agent's old secret, the next seq
    await ws.aclose()
    await again.aclose()
    assert read_db(restored, "SELECT count(*) FROM samples") == [(21,)]


def test_restoring_over_a_data_directory_keeps_what_it_replaced(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    settings = make_settings(data)
    certificate(settings)
    add_host(settings, "box1")
    archive = tmp_path / "b.tar.gz"
    assert run_cli(monkeypatch, capsys, data, "backup", str(archive))[0] == 0
    add_host(settings, "box2")  # made after the backup
    code, out, _ = run_cli(monkeypatch, capsys, data, "restore", str(archive))
    assert code == 0 and "moved" not in out and "before-restore-" in out
    assert read_db(settings, "SELECT name FROM hosts") == [("box1",)]
    [aside] = data.glob("before-restore-*")
    assert sorted(p.name for p in aside.iterdir()) >= ["cert.pem", "key.pem", "mbot.sqlite3"]


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def backed_up(tmp_path: Path, monkeypatch, capsys):
    """A data directory with one host, and the members of a good backup of it."""
    data = tmp_path / "data"
    settings = make_settings(data)
    certificate(settings)
    add_host(settings, "box1")
    good = tmp_path / "good.tar.gz"
    assert run_cli(monkeypatch, capsys, data, "backup", str(good))[0] == 0
    with tarfile.open(good) as tar:
        return settings, {m.name: tar.extractfile(m).read() for m in tar}


def test_a_hostile_or_foreign_archive_is_refused_and_changes_nothing(tmp_path, monkeypatch, capsys):
    settings, parts = backed_up(tmp_path, monkeypatch, capsys)
    data = settings.data_dir

    cases = {
        "traversal": {**parts, "../evil": b"x"},
        "missing key": {k: v for k, v in parts.items() if k != "key.pem"},
        "not sqlite": {**parts, "mbot.sqlite3": b"not a database" * 100},
        "foreign key": {**parts, "key.pem": parts["key.pem"].replace(b"A", b"B", 1)},
    }
    for what, members in cases.items():
        code, _, err = run_cli(monkeypatch, capsys, data, "restore", str(_archive(tmp_path / f"{what}.tgz", members)))
        assert code == 1 and err.startswith("mbot: ") and err.count("\n") == 1, (what, err)
    (tmp_path / "junk").write_bytes(os.urandom(4096))
    code, _, err = run_cli(monkeypatch, capsys, data, "restore", str(tmp_path / "junk"))
    assert code == 1 and "cannot be read as an mbot backup" in err
    assert not (tmp_path / "evil").exists()
    assert not list(data.glob("before-restore-*")) and not list(data.glob(".restore-*"))  # nothing moved or left
    assert read_db(settings, "SELECT name FROM hosts") == [("box1",)]


def test_an_archive_from_a_newer_mbot_is_refused(tmp_path, monkeypatch, capsys):
    settings, parts = backed_up(tmp_path, monkeypatch, capsys)
    data = settings.data_dir
    newer = tmp_path / "newer.sqlite3"
    newer.write_bytes(parts["mbot.sqlite3"])
    import sqlite3

    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    code, _, err = run_cli(monkeypatch, capsys, data, "restore",
                           str(_archive(tmp_path / "n.tgz", {**parts, "mbot.sqlite3": newer.read_bytes()})))
    assert code == 1 and "newer mbot" in err


def test_the_schedule_and_what_is_kept():
    assert backup.next_due(None, 100.0, 86400) == 100.0
    assert backup.next_due(50.0, 100.0, 86400) == 86450.0
    assert backup.next_due(50.0, 90000.0, 86400) == 90000.0  # overdue: at once
    names = [Path(f"mbot-backup-2026120{i}-000000.tar.gz") for i in range(1, 10)]
    assert backup.to_delete(names, 7) == names[:2] and backup.to_delete(names[:3], 7) == []


async def test_the_server_keeps_its_own_backups_and_a_failure_is_counted_not_fatal(tmp_path, mock_clock):
    settings = make_settings(tmp_path / "data")
    certificate(settings)
    add_host(settings, "box1")
    target = tmp_path / "backups"
    stats = metrics.BackupStats()
    attempts = trio.Semaphore(0)  # released after each attempt; the clock moves only between them

    def clock() -> float:
        return 1.8e9 + trio.current_time()

    async def run(directory: Path) -> None:
        await backup.keep_backups(settings.data_dir, directory, 3600.0, 2, stats, clock=clock,
                                  attempted=attempts.release)

    async with trio.open_nursery() as task:
        task.start_soon(run, target)
        for hour in range(3):  # the first at once, then one an hour
            await attempts.acquire()
            mock_clock.jump(3600)
        await attempts.acquire()
        task.cancel_scope.cancel()  # it sleeps until the next hour: cancelled there
    kept = backup.kept(target)
    assert stats.made == 4 and len(kept) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in kept)

    # A place that cannot be written (under a file; root ignores permissions): each attempt one warning and a count,
    # an hour apart, and the task goes on.
    (tmp_path / "a file").write_text("x")
    async with trio.open_nursery() as task:
        task.start_soon(run, tmp_path / "a file" / "backups")
        for hour in range(2):
            await attempts.acquire()
            mock_clock.jump(3600)
        await attempts.acquire()
        task.cancel_scope.cancel()
    assert stats.failures == 3 and stats.made == 4
    text = metrics.render([], metrics.ServerStats(0, 0, metrics.Histogram(), backups=stats), 0.0)
    assert "mbot_backup_failures_total 3" in text and "mbot_backups_total 4" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("mbot ")


def test_the_manifest_says_what_and_when(tmp_path):
    settings = make_settings(tmp_path / "data")
    certificate(settings)
    add_host(settings, "box1")
    made = backup.write_backup(settings.data_dir, tmp_path / "b.tar.gz", 1.8e9)
    with tarfile.open(made.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert manifest["schema"] == store.SCHEMA_VERSION and manifest["made"] == 1.8e9
