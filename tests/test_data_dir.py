"""One data directory, wherever mbot is started: the default, MBOT_DATA_DIR, an older version's ./mbot-data."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, add_host, make_settings
from mbot.config import ConfigError, load_settings

USER = 1000  # any uid but root's


def test_a_users_default_is_the_xdg_data_directory_wherever_mbot_starts(tmp_path):
    home = tmp_path / "home"
    for cwd in (tmp_path, tmp_path / "elsewhere", Path("/")):
        assert load_settings({"HOME": str(home)}, cwd=cwd, euid=USER).data_dir == home / ".local/share/mbot"
        xdg = load_settings({"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg")}, cwd=cwd, euid=USER)
        assert xdg.data_dir == tmp_path / "xdg" / "mbot"
    # The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
    relative = load_settings({"HOME": str(home), "XDG_DATA_HOME": "xdg"}, cwd=tmp_path, euid=USER)
    assert relative.data_dir == home / ".local/share/mbot"


def test_roots_default_is_var_lib_mbot(tmp_path):
    # Even with a user's XDG_DATA_HOME kept by `sudo -E`: root's data must not land in a user's home.
    env = {"HOME": "/root", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert load_settings(env, cwd=tmp_path, euid=0).data_dir == Path("/var/lib/mbot")


def test_a_user_without_a_home_must_set_mbot_data_dir(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_settings({"HOME": ""}, cwd=tmp_path, euid=2_000_000_001)  # no such user in /etc/passwd
    assert error.value.variable == "MBOT_DATA_DIR" and "home" in str(error.value)
    given = load_settings({"HOME": "", "MBOT_DATA_DIR": str(tmp_path)}, cwd=tmp_path, euid=2_000_000_001)
    assert given.data_dir == tmp_path


def test_a_relative_mbot_data_dir_is_made_absolute_once(tmp_path):
    settings = load_settings({"MBOT_DATA_DIR": "./sub/../data"}, cwd=tmp_path, euid=USER)
    assert settings.data_dir == tmp_path / "data"  # so a later chdir cannot move it
    assert load_settings({"MBOT_DATA_DIR": "/srv//mbot/"}, cwd=tmp_path, euid=USER).data_dir == Path("/srv/mbot")


def test_an_older_versions_mbot_data_is_used_until_the_default_has_a_database(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "old-checkout"
    env = {"HOME": str(home)}
    default = home / ".local/share/mbot"
    (cwd / "mbot-data").mkdir(parents=True)
    # An empty ./mbot-data is nothing to keep.
    assert load_settings(env, cwd=cwd, euid=USER).data_dir == default
    add_host(make_settings(cwd / "mbot-data"), "old1")

    legacy = load_settings(env, cwd=cwd, euid=USER)
    assert legacy.data_dir == cwd / "mbot-data"
    assert f"MBOT_DATA_DIR={cwd / 'mbot-data'}" in legacy.data_dir_warning and str(default) in legacy.data_dir_warning
    # MBOT_DATA_DIR decides alone.
    chosen = load_settings({**env, "MBOT_DATA_DIR": str(tmp_path / "new")}, cwd=cwd, euid=USER)
    assert (chosen.data_dir, chosen.data_dir_warning) == (tmp_path / "new", None)

    add_host(make_settings(default), "new1")  # the default has a database now: it wins, and says so
    both = load_settings(env, cwd=cwd, euid=USER)
    assert both.data_dir == default
    assert both.data_dir_warning.startswith(f"not using {cwd / 'mbot-data'}")


def _cli(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mbot ARGS` started in `cwd` as a user (not root) with this HOME, without MBOT_DATA_DIR.

    The uid is pretended (os.geteuid) because this suite may run as root, whose default, /var/lib/mbot, a test must
    not touch; everything else is the real CLI in its own process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MBOT_DATA_DIR", "XDG_DATA_HOME")}
    env.update(HOME=str(home), MBOT_PUBLIC_HOST="127.0.0.1", PYTHONPATH=str(ROOT))
    run_as_user = f"import os, sys; os.geteuid = lambda: {USER}; from mbot.cli import main; sys.exit(main())"
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", run_as_user, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


def test_the_cli_finds_the_same_certificate_and_database_from_any_folder(tmp_path):
    home = tmp_path / "home"
    old_checkout = tmp_path / "old-checkout"
    add_host(make_settings(old_checkout / "mbot-data"), "old1")

    # Started where an older version left its data, before the default has any: that data, and a warning.
    there = _cli(old_checkout, home, "hosts")
    assert there.returncode == 0, there.stderr
    assert there.stdout.startswith("old1 ")
    assert len(re.findall(r"WARNING mbot: using .*/old-checkout/mbot-data", there.stderr)) == 1, there.stderr

    made = _cli(tmp_path / "a", home, "newkey", "box1")
    assert made.returncode == 0, made.stderr
    fingerprint = re.search(r"^AGENT_FINGERPRINT=(\w+)$", made.stdout, re.M)[1]
    assert _cli(tmp_path / "b" / "deeper", home, "fingerprint").stdout.strip() == fingerprint
    hosts = _cli(tmp_path / "b", home, "hosts")
    assert hosts.stdout.startswith("box1 offline") and hosts.stderr == ""
    assert (home / ".local/share/mbot/mbot.sqlite3").exists()
    assert not (tmp_path / "a" / "mbot-data").exists() and not (tmp_path / "b" / "mbot-data").exists()

    # Now that the default has a database, the old folder's is no longer used, and the warning says so.
    again = _cli(old_checkout, home, "hosts")
    assert again.stdout.startswith("box1 offline")
    assert "WARNING mbot: not using" in again.stderr and "MBOT_DATA_DIR=" in again.stderr
