"""A backup that is asked to stop (the server stopping during its own backup) stops and leaves nothing behind."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from helpers import add_host, certificate, make_settings
from mbot import backup, metrics


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_backup_told_to_stop_raises_and_leaves_no_archive_and_no_scratch(tmp_path):
    settings = make_settings(tmp_path / "data")
    certificate(settings)
    add_host(settings, "box1")
    out_dir = tmp_path / "backups"
    asked = []

    def stop() -> bool:  # says stop while the database is being archived
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(backup.BackupStopped):
        backup.write_backup(settings.data_dir, out_dir / "b.tar.gz", 1.8e9, stop=stop)
    assert leftovers(out_dir) == []
    # Not told to stop: the same backup is written.
    made = backup.write_backup(settings.data_dir, out_dir / "b.tar.gz", 1.8e9, stop=lambda: False)
    assert made.hosts == 1 and leftovers(out_dir) == ["b.tar.gz"]


async def test_the_server_stopping_during_its_own_backup_stops_it_at_once_and_leaves_nothing(tmp_path,
                                                                                             monkeypatch):
    settings = make_settings(tmp_path / "data")
    certificate(settings)
    add_host(settings, "box1")
    directory = tmp_path / "backups"
    copied, go_on = threading.Event(), threading.Event()
    released: list[bool] = []
    real_copy = backup._copy_database

    def copy_then_wait(source: Path, target: Path) -> None:
        # Holds the backup between the database copy and its archiving (a big database's minute of gzip) until
        # the test has stopped the server's task.
        real_copy(source, target)
        copied.set()
        released.append(go_on.wait(10))

    monkeypatch.setattr(backup, "_copy_database", copy_then_wait)
    stats = metrics.BackupStats()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backup.keep_backups, settings.data_dir, directory, 3600.0, 2, stats)
            await trio.to_thread.run_sync(copied.wait, 10)
            assert [p.name for p in directory.iterdir()][0].startswith(".mbot-backup-")  # under way
            nursery.cancel_scope.cancel()  # the server stops
            with trio.CancelScope(shield=True):  # (an await in the cancelled scope would raise at once)
                await trio.testing.wait_all_tasks_blocked()  # the cancellation has reached the backup's thread
            go_on.set()
    assert released == [True]  # the backup went on when the test said so, not after the 10 s
    assert not scope.cancelled_caught
    assert leftovers(directory) == [] and stats.made == 0 and stats.failures == 0
