"""Server settings: the environment, read once into one frozen value.

Every variable name here is part of mbot's interface (see docs/architecture.md); a bad value is a ConfigError that
names the variable, so start-up can end with one clear line instead of a traceback.
"""
from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .durations import parse_duration
from .install import is_host
from .rollup import DEFAULT_TIERS, Tier, make_tiers

DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"
DB_FILE = "mbot.sqlite3"
ROOT_DATA_DIR = Path("/var/lib/mbot")
LEGACY_DATA_DIR = "mbot-data"  # the old default, relative to the working directory


def _local_zone() -> tzinfo:
    return datetime.now().astimezone().tzinfo or ZoneInfo("UTC")


class ConfigError(Exception):
    """A variable has a value mbot cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    bot_token: str | None
    telegram_api_url: str
    port: int
    host: str
    data_dir: Path
    public_host: str
    allowed_users: tuple[int, ...] | None  # ALLOWED_USERS in the given order: the first one is the admin
    metrics_port: int | None = None  # MBOT_METRICS_PORT: /metrics for Prometheus; off when unset
    metrics_host: str = "127.0.0.1"
    alert_repeat: float = 3600.0  # MBOT_ALERT_REPEAT: reminder period while an alert stays firing
    reboot_grace: float = 600.0  # MBOT_REBOOT_GRACE: how long a host rebooted from the chat may take to come back
    alert_group_wait: float = 30.0  # MBOT_ALERT_GROUP_WAIT: alerts of one user starting this close go as one message
    disk_forecast: float = 7 * 86400.0  # MBOT_DISK_FORECAST: a disk forecast to be full sooner than this alerts
    tiers: tuple[Tier, ...] = DEFAULT_TIERS  # MBOT_RETAIN_RAW/_1M/_10M/_1H: how long each history tier is kept
    tz: tzinfo = field(default_factory=_local_zone)  # MBOT_TZ: the zone of chart time axes
    max_hosts_per_user: int = 100  # MBOT_MAX_HOSTS_PER_USER: /newkey (and CLI newkey --owner) stop there
    watch_self: bool | None = None  # MBOT_WATCH_SELF: 1 on, 0 off, unset: on except inside a container
    data_dir_warning: str | None = None  # when an older version's ./mbot-data is here: what to do about it
    backup_dir: Path | None = None  # MBOT_BACKUP_DIR: the server makes a backup there every backup_every
    backup_every: float = 86400.0  # MBOT_BACKUP_EVERY
    backup_keep: int = 7  # MBOT_BACKUP_KEEP: the newest this many are kept
    public_host_guessed: bool = False  # MBOT_PUBLIC_HOST was unset: public_host is guess_public_host()'s answer
    listeners: int = 1  # MBOT_LISTENERS: processes serving agents (this one and N - 1 listener processes)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def bot_enabled(self) -> bool:
        return self.bot_token is not None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a port number (1-65535, or 0 for any free port), got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(name, f"must be a port number (1-65535, or 0 for any free port), got {raw!r}")
    return port


def _user_ids(env: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    """Ids in their given order (the first is the admin), each once."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    ids: dict[int, None] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            user_id = int(part)
        except ValueError:
            raise ConfigError(name, f"must be comma-separated Telegram user ids, got {part!r}") from None
        ids[user_id] = None
    return tuple(ids)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number of at least 1, got {raw!r}") from None
    if value < 1:
        raise ConfigError(name, f"must be a whole number of at least 1, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """1/0 (yes/no, true/false, on/off); None when unset, so that the default can depend on where mbot runs."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "yes", "true", "on"):
        return True
    if raw in ("0", "no", "false", "off"):
        return False
    raise ConfigError(name, f"must be 1 or 0, got {raw!r}")


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:  # also says that 0 is not a duration
        raise ConfigError(name, str(exc)) from None
    return seconds


GROUP_WAIT_MAX = 600.0  # a longer wait would hold every alert back for longer than any storm takes to arrive


def _group_wait(env: Mapping[str, str], name: str) -> float:
    """MBOT_ALERT_GROUP_WAIT: a duration up to 10 min, or 0 (every alert on its own, at once)."""
    if env.get(name, "").strip() == "0":
        return 0.0
    seconds = _duration(env, name, 30.0)
    if seconds > GROUP_WAIT_MAX:
        raise ConfigError(name, f"must be at most 10m (or 0 for no grouping), got {env[name].strip()!r}")
    return seconds


def _zone(env: Mapping[str, str], name: str) -> tzinfo:
    raw = env.get(name, "").strip()
    if not raw:
        return _local_zone()
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(name, f"{raw!r} is not a time zone name like Europe/Berlin or UTC") from None


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(name, f"must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def mbot_command() -> str:
    """How to run mbot's CLI on this machine, for messages that tell a user what to type: plain `python -m mbot`
    where `python` is this interpreter (the image, an activated venv), else this interpreter's path (relative when
    it is below the working directory, as `.venv/bin/python` is after `make run`)."""
    python = Path(sys.executable)
    found = shutil.which("python")
    if found and Path(found).resolve() == python.resolve():
        return "python -m mbot"
    here = Path.cwd()
    if here != Path(here.anchor) and python.is_relative_to(here):
        return f"{python.relative_to(here)} -m mbot"
    return f"{python} -m mbot"


def default_data_dir(env: Mapping[str, str], euid: int) -> Path:
    """Where the data lives when MBOT_DATA_DIR is unset: /var/lib/mbot for root, the XDG data directory
    ($XDG_DATA_HOME/mbot, else ~/.local/share/mbot) for anyone else. Never the working directory, so the server and
    every CLI command find the same certificate and database wherever they are started."""
    if euid == 0:
        return ROOT_DATA_DIR
    xdg = env.get("XDG_DATA_HOME", "").strip()
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "mbot"
    home = env.get("HOME", "").strip()
    if not home:
        try:
            home = pwd.getpwuid(euid).pw_dir
        except KeyError:  # a uid without an entry in /etc/passwd (common in containers)
            pass
    if not os.path.isabs(home):
        raise ConfigError("MBOT_DATA_DIR", "is not set, and this user has no home directory for the default "
                                           "(~/.local/share/mbot): set it to a directory")
    return Path(home) / ".local" / "share" / "mbot"


def _data_dir(env: Mapping[str, str], cwd: Path | None, euid: int) -> tuple[Path, str | None]:
    """The absolute data directory, and a warning when an older version's ./mbot-data is in the way.

    MBOT_DATA_DIR wins (a relative value is taken relative to the working directory, once, here). Without it, the
    default applies, except in one case: the default holds no database yet and ./mbot-data (the old default,
    relative to the working directory) holds one. That database is used rather than silently abandoned, with a
    warning telling how to make the choice permanent. When both hold one, the default is used and the warning says
    that ./mbot-data is not."""
    raw = env.get("MBOT_DATA_DIR", "").strip()
    if raw:
        if os.path.isabs(raw):
            return Path(os.path.normpath(raw)), None
        if cwd is None:
            raise ConfigError("MBOT_DATA_DIR", f"{raw!r} is relative, and the working directory is gone")
        return Path(os.path.normpath(cwd / raw)), None
    default = default_data_dir(env, euid)
    if cwd is None:
        return default, None
    legacy = Path(os.path.normpath(cwd / LEGACY_DATA_DIR))
    # os.path.exists, not Path.exists: a directory this user may not look into counts as absent, not as an error.
    if not os.path.exists(legacy / DB_FILE):
        return default, None
    if not os.path.exists(default / DB_FILE):
        return legacy, (f"using {legacy}, the data of an older mbot (its default was ./mbot-data in the working "
                        f"directory); mbot now keeps its data in {default}: to keep using this data from anywhere, "
                        f"stop mbot and move the directory there, or set MBOT_DATA_DIR={legacy}")
    return default, (f"not using {legacy}, the data of an older mbot (its default was ./mbot-data in the working "
                     f"directory): mbot now keeps its data in {default}, which has its own database; to use the "
                     f"older data, set MBOT_DATA_DIR={legacy}, else move it out of the way")


def _working_directory() -> Path | None:
    try:
        return Path.cwd()
    except OSError:  # deleted under us: only a relative MBOT_DATA_DIR needs it
        return None


def guess_public_host() -> str:
    """The address of the interface that holds the default route: the one other machines most likely reach.

    connect() on a UDP socket only asks the routing table for a source address: no packet is sent, and it works
    offline as long as a default route exists. Without one (or only a loopback or link-local answer), the host
    name, else 127.0.0.1."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.connect((probe, 9))
                address = ipaddress.ip_address(udp.getsockname()[0])
        except (OSError, ValueError):
            continue
        if not (address.is_unspecified or address.is_loopback or address.is_link_local):
            return str(address)
    return socket.gethostname() or "127.0.0.1"


def _public_host(env: Mapping[str, str]) -> tuple[str, bool]:
    """(MBOT_PUBLIC_HOST or the guess, whether it was guessed). It goes into the one-line installer that users
    paste into a shell, so only a plain host name or IP address is taken."""
    raw = env.get("MBOT_PUBLIC_HOST", "").strip()
    if not raw:
        return guess_public_host(), True
    if not is_host(raw):
        raise ConfigError("MBOT_PUBLIC_HOST", "must be a host name or IP address that agents can reach, without "
                          f"scheme or port (e.g. monitor.example.org or 192.0.2.10), got {raw!r}")
    return raw, False


def load_settings(env: Mapping[str, str] | None = None, *, cwd: Path | None = None,
                  euid: int | None = None) -> Settings:
    """Read Settings from `env` (os.environ by default). Pure apart from the public address's guess and the look at
    where the data directory's database is (`cwd` and `euid` default to this process's)."""
    env = os.environ if env is None else env
    data_dir, data_dir_warning = _data_dir(env, _working_directory() if cwd is None else cwd,
                                           os.geteuid() if euid is None else euid)
    public_host, public_host_guessed = _public_host(env)
    token = env.get("BOT_TOKEN", "").strip() or None
    if token is not None and (":" not in token or any(c.isspace() for c in token)):
        raise ConfigError("BOT_TOKEN", "does not look like a bot token from @BotFather (123456:ABC...)")
    return Settings(
        bot_token=token,
        telegram_api_url=_url(env, "TELEGRAM_API_URL", DEFAULT_TELEGRAM_API_URL),
        port=_port(env, "PORT", 8000),
        host=env.get("MBOT_HOST", "").strip() or "0.0.0.0",
        data_dir=data_dir,
        public_host=public_host,
        public_host_guessed=public_host_guessed,
        allowed_users=_user_ids(env, "ALLOWED_USERS"),
        metrics_port=_port(env, "MBOT_METRICS_PORT", -1) if env.get("MBOT_METRICS_PORT", "").strip() else None,
        metrics_host=env.get("MBOT_METRICS_HOST", "").strip() or "127.0.0.1",
        alert_repeat=_duration(env, "MBOT_ALERT_REPEAT", 3600.0),
        reboot_grace=_duration(env, "MBOT_REBOOT_GRACE", 600.0),
        alert_group_wait=_group_wait(env, "MBOT_ALERT_GROUP_WAIT"),
        disk_forecast=_duration(env, "MBOT_DISK_FORECAST", 7 * 86400.0),
        tiers=make_tiers(**{key: _duration(env, f"MBOT_RETAIN_{suffix}", default) for key, suffix, default in (
            ("raw", "RAW", 2 * 86400.0), ("m1", "1M", 7 * 86400.0), ("m10", "10M", 90 * 86400.0),
            ("h1", "1H", 730 * 86400.0))}),
        tz=_zone(env, "MBOT_TZ"),
        max_hosts_per_user=_positive_int(env, "MBOT_MAX_HOSTS_PER_USER", 100),
        watch_self=_flag(env, "MBOT_WATCH_SELF"),
        data_dir_warning=data_dir_warning,
        backup_dir=_backup_dir(env, cwd),
        backup_every=_duration(env, "MBOT_BACKUP_EVERY", 86400.0),
        backup_keep=_positive_int(env, "MBOT_BACKUP_KEEP", 7),
        listeners=_listeners(env, "MBOT_LISTENERS"),
    )


MAX_LISTENERS = 16


def _listeners(env: Mapping[str, str], name: str) -> int:
    value = _positive_int(env, name, 1)
    if value > MAX_LISTENERS:
        raise ConfigError(name, f"must be at most {MAX_LISTENERS} (one process per core is the most that helps), "
                                f"got {value}")
    return value


def _backup_dir(env: Mapping[str, str], cwd: Path | None) -> Path | None:
    raw = env.get("MBOT_BACKUP_DIR", "").strip()
    if not raw:
        return None
    if os.path.isabs(raw):
        return Path(os.path.normpath(raw))
    here = cwd or _working_directory()
    if here is None:
        raise ConfigError("MBOT_BACKUP_DIR", f"{raw!r} is relative, and the working directory is gone")
    return Path(os.path.normpath(here / raw))


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory (private to this user) and prove it is writable."""
    path = settings.data_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)  # made by hand or by an older version: it holds the key and every host's data
        # A unique probe: two commands at once (a health check and `hosts`) must not trip over each other.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError("MBOT_DATA_DIR", f"{path} is not a writable directory ({exc.strerror or exc})") from None
