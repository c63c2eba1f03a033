from __future__ import annotations

import os
from pathlib import Path

import pytest

from mbot.config import DEFAULT_TELEGRAM_API_URL, ConfigError, load_settings, prepare_data_dir


def test_defaults():
    s = load_settings({})
    assert (s.port, s.host, s.telegram_api_url, s.bot_token, s.allowed_users) == (
        8000, "0.0.0.0", DEFAULT_TELEGRAM_API_URL, None, None)
    assert s.public_host  # the machine's hostname
    assert not s.bot_enabled


def test_values():
    s = load_settings({"BOT_TOKEN": "123:abc", "TELEGRAM_API_URL": "http://127.0.0.1:9/", "PORT": "9443",
                       "MBOT_HOST": "127.0.0.1", "MBOT_DATA_DIR": "/x", "MBOT_PUBLIC_HOST": "mon.example.org",
                       "ALLOWED_USERS": "333, 1,22,1", "MBOT_MAX_HOSTS_PER_USER": "5"})
    assert s.bot_enabled and s.telegram_api_url == "http://127.0.0.1:9"
    assert (s.port, s.host, s.public_host) == (9443, "127.0.0.1", "mon.example.org")
    assert s.allowed_users == (333, 1, 22)  # in order, each once: the first is the admin
    assert s.max_hosts_per_user == 5 and load_settings({}).max_hosts_per_user == 100
    assert s.db_path == Path("/x/mbot.sqlite3")


def test_reboot_grace():
    assert load_settings({}).reboot_grace == 600.0
    assert load_settings({"MBOT_REBOOT_GRACE": "15m"}).reboot_grace == 900.0


def test_alert_group_wait_and_disk_forecast():
    assert load_settings({}).alert_group_wait == 30.0
    assert load_settings({"MBOT_ALERT_GROUP_WAIT": "1m"}).alert_group_wait == 60.0
    assert load_settings({"MBOT_ALERT_GROUP_WAIT": "0"}).alert_group_wait == 0.0  # no grouping
    assert load_settings({}).disk_forecast == 7 * 86400.0
    assert load_settings({"MBOT_DISK_FORECAST": "2d"}).disk_forecast == 2 * 86400.0


@pytest.mark.parametrize("env, variable", [
    ({"PORT": "abc"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"ALLOWED_USERS": "12,bob"}, "ALLOWED_USERS"),
    ({"MBOT_MAX_HOSTS_PER_USER": "0"}, "MBOT_MAX_HOSTS_PER_USER"),
    ({"MBOT_MAX_HOSTS_PER_USER": "lots"}, "MBOT_MAX_HOSTS_PER_USER"),
    ({"TELEGRAM_API_URL": "ftp://x"}, "TELEGRAM_API_URL"),
    ({"BOT_TOKEN": "no token here"}, "BOT_TOKEN"),
    ({"MBOT_REBOOT_GRACE": "soon"}, "MBOT_REBOOT_GRACE"),
    ({"MBOT_REBOOT_GRACE": "0"}, "MBOT_REBOOT_GRACE"),
    ({"MBOT_ALERT_GROUP_WAIT": "soon"}, "MBOT_ALERT_GROUP_WAIT"),
    ({"MBOT_ALERT_GROUP_WAIT": "1h"}, "MBOT_ALERT_GROUP_WAIT"),
    ({"MBOT_DISK_FORECAST": "0"}, "MBOT_DISK_FORECAST"),
    ({"MBOT_DISK_FORECAST": "a week"}, "MBOT_DISK_FORECAST"),
])
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ")


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as error:
        prepare_data_dir(load_settings({"MBOT_DATA_DIR": str(blocker / "sub")}))
    assert error.value.variable == "MBOT_DATA_DIR"


def test_data_dir_is_created_private(tmp_path):
    settings = load_settings({"MBOT_DATA_DIR": str(tmp_path / "new")})
    prepare_data_dir(settings)
    assert os.stat(settings.data_dir).st_mode & 0o777 == 0o700


def test_messages_name_the_cli_as_it_runs_here(monkeypatch, tmp_path):
    from mbot import config

    monkeypatch.setattr(config.sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    monkeypatch.setattr(config.shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    assert config.mbot_command() == ".venv/bin/python -m mbot"  # after `make run`, from the checkout
    monkeypatch.chdir("/")
    assert config.mbot_command() == f"{tmp_path}/.venv/bin/python -m mbot"
    monkeypatch.setattr(config.shutil, "which", lambda name: config.sys.executable)
    assert config.mbot_command() == "python -m mbot"  # the image, or an activated venv
