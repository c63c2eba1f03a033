"""Server settings: the environment, read once into one frozen value.

Every variable name here is part of mbot's interface (see docs/architecture.md); a bad value is a ConfigError that
names the variable, so start-up can end with one clear line instead of a traceback.
"""
from __future__ import annotations

import ipaddress
import os
import socket
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
    tiers: tuple[Tier, ...] = DEFAULT_TIERS  # MBOT_RETAIN_RAW/_1M/_10M/_1H: how long each history tier is kept
    tz: tzinfo = field(default_factory=_local_zone)  # MBOT_TZ: the zone of chart time axes
    max_hosts_per_user: int = 100  # MBOT_MAX_HOSTS_PER_USER: /newkey (and CLI newkey --owner) stop there
    public_host_guessed: bool = False  # MBOT_PUBLIC_HOST was unset: public_host is guess_public_host()'s answer

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mbot.sqlite3"

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


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:  # also says that 0 is not a duration
        raise ConfigError(name, str(exc)) from None
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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from `env` (os.environ by default). Pure apart from the public address's guess."""
    env = os.environ if env is None else env
    public_host, public_host_guessed = _public_host(env)
    token = env.get("BOT_TOKEN", "").strip() or None
    if token is not None and (":" not in token or any(c.isspace() for c in token)):
        raise ConfigError("BOT_TOKEN", "does not look like a bot token from @BotFather (123456:ABC...)")
    return Settings(
        bot_token=token,
        telegram_api_url=_url(env, "TELEGRAM_API_URL", DEFAULT_TELEGRAM_API_URL),
        port=_port(env, "PORT", 8000),
        host=env.get("MBOT_HOST", "").strip() or "0.0.0.0",
        data_dir=Path(env.get("MBOT_DATA_DIR", "").strip() or "./mbot-data"),
        public_host=public_host,
        public_host_guessed=public_host_guessed,
        allowed_users=_user_ids(env, "ALLOWED_USERS"),
        metrics_port=_port(env, "MBOT_METRICS_PORT", -1) if env.get("MBOT_METRICS_PORT", "").strip() else None,
        metrics_host=env.get("MBOT_METRICS_HOST", "").strip() or "127.0.0.1",
        alert_repeat=_duration(env, "MBOT_ALERT_REPEAT", 3600.0),
        tiers=make_tiers(**{key: _duration(env, f"MBOT_RETAIN_{suffix}", default) for key, suffix, default in (
            ("raw", "RAW", 2 * 86400.0), ("m1", "1M", 7 * 86400.0), ("m10", "10M", 90 * 86400.0),
            ("h1", "1H", 730 * 86400.0))}),
        tz=_zone(env, "MBOT_TZ"),
        max_hosts_per_user=_positive_int(env, "MBOT_MAX_HOSTS_PER_USER", 100),
    )


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
