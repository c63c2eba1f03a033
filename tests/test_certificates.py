"""The certificate is never replaced silently once hosts have been given its fingerprint."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from helpers import ROOT, add_host, make_settings, open_tls, read_db
from mbot import cli, tls


def mbot(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MBOT_DATA_DIR": str(data_dir), "MBOT_PUBLIC_HOST": "127.0.0.1", "PORT": "0",
           "MBOT_HOST": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "mbot", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)


@pytest.fixture
def main(monkeypatch, capsys, caplog):
    """mbot(...)'s run of cli.main in this process (no interpreter start): returncode, stdout, stderr. Logging goes
    to caplog here, not to stderr: `logged` is what a process would have written there at WARNING and above."""
    caplog.set_level(logging.INFO)

    def run(data_dir: Path, *args: str) -> SimpleNamespace:
        for name, value in {"MBOT_DATA_DIR": str(data_dir), "MBOT_PUBLIC_HOST": "127.0.0.1", "PORT": "0",
                            "MBOT_HOST": "127.0.0.1"}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        caplog.clear()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        return SimpleNamespace(returncode=code, stdout=out, stderr=err, logged=logged)
    return run


def remove_pair(data_dir: Path) -> None:
    for name in (tls.CERT_FILE, tls.KEY_FILE):
        (data_dir / name).unlink()


def test_without_hosts_a_lost_certificate_is_remade_silently(tmp_path):
    settings = make_settings(tmp_path)
    first = cli._certificate(settings)  # the first start: nothing to ask anyone
    assert read_db(settings, "SELECT value FROM kv WHERE key = ?", tls.FINGERPRINT_KEY) == [(first.fingerprint,)]
    remove_pair(settings.data_dir)
    second = cli._certificate(settings)  # no host was ever given the first fingerprint
    assert second.fingerprint != first.fingerprint
    assert read_db(settings, "SELECT value FROM kv WHERE key = ?", tls.FINGERPRINT_KEY) == [(second.fingerprint,)]


def test_with_hosts_missing_files_are_refused_naming_the_old_fingerprint(tmp_path, caplog):
    settings = make_settings(tmp_path)
    # Made by an older version, which recorded nothing: the first load records the fingerprint.
    old = tls.ensure_certificate(settings.data_dir, ["127.0.0.1"])
    add_host(settings, "box1")
    add_host(settings, "box2")
    assert cli._certificate(settings).fingerprint == old.fingerprint
    saved = {name: (settings.data_dir / name).read_bytes() for name in (tls.CERT_FILE, tls.KEY_FILE)}
    remove_pair(settings.data_dir)

    with pytest.raises(tls.CertificateRefused) as gone:
        cli._certificate(settings)
    assert str(gone.value).startswith(f"cert.pem and key.pem are missing in {settings.data_dir}, and 2 hosts are "
                                      f"pinned to its fingerprint {old.fingerprint}: restore ")
    assert "`python -m mbot new-cert`" in str(gone.value)
    assert not (settings.data_dir / tls.CERT_FILE).exists()  # nothing was made

    # Half a pair is the same refusal: the lost half is named.
    (settings.data_dir / tls.CERT_FILE).write_bytes(saved[tls.CERT_FILE])
    with pytest.raises(tls.CertificateRefused, match=rf"^key\.pem is missing in .*\(cert\.pem is there\), "
                                                     rf"and 2 hosts are pinned to its fingerprint {old.fingerprint}"):
        cli._certificate(settings)
    # Restoring the files is the first way out.
    (settings.data_dir / tls.KEY_FILE).write_bytes(saved[tls.KEY_FILE])
    assert cli._certificate(settings).fingerprint == old.fingerprint
    assert "not the one hosts were given" not in caplog.text

    # Another pair put in place by hand is used (the operator chose it), but not without a word.
    (tmp_path / "other").mkdir()
    other = tls.ensure_certificate(tmp_path / "other", ["127.0.0.1"])
    for name in (tls.CERT_FILE, tls.KEY_FILE):
        shutil.copy(tmp_path / "other" / name, settings.data_dir / name)
    assert cli._certificate(settings).fingerprint == other.fingerprint
    assert f"not the one hosts were given ({old.fingerprint}, now {other.fingerprint})" in caplog.text
    assert read_db(settings, "SELECT value FROM kv WHERE key = ?", tls.FINGERPRINT_KEY) == [(other.fingerprint,)]


def test_a_certificate_that_does_not_match_its_key_is_one_clear_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        tls.ensure_certificate(folder, ["127.0.0.1"])
    shutil.copy(b / tls.KEY_FILE, a / tls.KEY_FILE)
    done = mbot(a, "fingerprint")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"mbot: {a / tls.KEY_FILE} is not the key of {a / tls.CERT_FILE}")
    assert "new-cert" in done.stderr


async def test_new_cert_is_the_way_out_and_is_refused_under_a_running_server(tmp_path, main):
    data = tmp_path / "data"
    made = await trio.to_thread.run_sync(main, data, "newkey", "box1")
    old = re.search(r"^AGENT_FINGERPRINT=(\w+)$", made.stdout, re.M)[1]
    remove_pair(data)

    # The server and every command that needs the certificate refuse in one line, exit 2 (the server as a real
    # process, the commands through the same main() in this process).
    refused = await trio.to_thread.run_sync(mbot, data)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert old in refused.stderr and "restore cert.pem and key.pem from a backup" in refused.stderr
    for command in (("fingerprint",), ("newkey", "box2")):
        refused = await trio.to_thread.run_sync(main, data, *command)
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stderr.count("\n") == 1 and not refused.logged, (refused.stderr, refused.logged)
        assert old in refused.stderr and "restore cert.pem and key.pem from a backup" in refused.stderr
    assert not (data / tls.CERT_FILE).exists()

    renewed = await trio.to_thread.run_sync(main, data, "new-cert")
    assert renewed.returncode == 0, renewed.stderr
    new = re.search(r"^AGENT_FINGERPRINT=(\w+)$", renewed.stdout, re.M)[1]
    assert new != old and f"replaces the old one ({old})" in renewed.stdout
    assert ".bot_fingerprint.json" in renewed.stdout and "install line" in renewed.stdout

    env = {**os.environ, "MBOT_DATA_DIR": str(data), "MBOT_PUBLIC_HOST": "127.0.0.1", "PORT": "0",
           "MBOT_HOST": "127.0.0.1"}
    process = await trio.lowlevel.open_process([sys.executable, "-m", "mbot"], env=env, cwd=ROOT,
                                               stderr=subprocess.PIPE)
    log = b""
    try:
        with trio.fail_after(30):
            while not (match := re.search(rb"mbot is up: agents on port (\d+)", log)):
                chunk = await process.stderr.receive_some()
                assert chunk, log.decode()
                log += chunk
        assert f"data directory: {data}\n".encode() in log
        stream = await open_tls(int(match[1]))
        assert hashlib.sha256(stream.getpeercert(binary_form=True)).hexdigest() == new
        await trio.aclose_forcefully(stream)

        # Under a running server, new-cert would leave it serving a certificate no file and no command names.
        busy = await trio.to_thread.run_sync(main, data, "new-cert")  # the server's lock is another process's
        assert busy.returncode == 1 and "a server is running" in busy.stderr, busy.stderr
        assert tls.load_certificate(data).fingerprint == new

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
