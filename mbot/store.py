"""SQLite storage: schema and migrations, the queries, and the thread-local read connections.

Layout (measured in FACTS.md: key order decides insert speed):
- `samples` is a rowid table appended in arrival order, one row per sample: the values of all its series packed as
  float32 in `vals`, their names interned once in `layouts`. One row per sample (not per value) keeps the
  (host_id, ts) index small enough that 5,000 agents at 5 s are a few thousand index entries a second.
- `hosts` carries the per-host high-water mark (epoch, last_seq) that makes replays idempotent, and the latest
  sample as JSON, so "latest of every host" is one table scan.

All writes of the server go through mbot.writer.Writer (one thread, batched transactions); the CLI, a separate
process, writes through its own connection with the same functions.

SQL lives here and in two named data-access modules only: mbot.writer (the ingest writes, in its batches) and
mbot.users (the users and invites tables). Everything else (history, the CLI, services) calls functions of this
module, so a schema change is found in one place (tests/test_layering.py checks it).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import trio

# Host is also read as store.Host by modules written before mbot.model; new code imports it from there.
from .checks import CheckSpec
from .model import AlertMessage, Binding, Host, StatusPage, StoredSnapshot

T = TypeVar("T")

log = logging.getLogger(__name__)

# Each entry moves the schema from version i to i+1; never edit a released one, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        owner INTEGER NOT NULL DEFAULT 0,
        key_id TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        facts TEXT,
        epoch INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL DEFAULT 0,
        last_ts REAL,
        last_seen REAL,
        last_metrics TEXT,
        samples_count INTEGER NOT NULL DEFAULT 0,
        UNIQUE (owner, name)
    );
    CREATE TABLE layouts (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);
    CREATE TABLE samples (
        host_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        seq INTEGER NOT NULL,
        layout_id INTEGER NOT NULL,
        vals BLOB NOT NULL
    );
    CREATE INDEX samples_host_ts ON samples (host_id, ts);
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    ALTER TABLE hosts ADD COLUMN revoked REAL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        user_id INTEGER NOT NULL,
        host_id INTEGER,
        host_name TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE hosts ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE alert_rules (
        host_id INTEGER NOT NULL,
        metric TEXT NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (host_id, metric)
    );
    """,
    """
    CREATE TABLE agg_1m (
        host_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        layout_id INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mins BLOB NOT NULL,
        avgs BLOB NOT NULL,
        maxs BLOB NOT NULL,
        PRIMARY KEY (host_id, bucket, layout_id)
    ) WITHOUT ROWID;
    CREATE TABLE agg_10m (
        host_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        layout_id INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mins BLOB NOT NULL,
        avgs BLOB NOT NULL,
        maxs BLOB NOT NULL,
        PRIMARY KEY (host_id, bucket, layout_id)
    ) WITHOUT ROWID;
    CREATE TABLE agg_1h (
        host_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        layout_id INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mins BLOB NOT NULL,
        avgs BLOB NOT NULL,
        maxs BLOB NOT NULL,
        PRIMARY KEY (host_id, bucket, layout_id)
    ) WITHOUT ROWID;
    """,
    # Bot users added by a claim or invite code (mbot.users), and the codes' SHA-256 (never the codes).
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        role TEXT NOT NULL,
        added REAL NOT NULL,
        invited_by INTEGER
    );
    CREATE TABLE invites (
        code_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        created_by INTEGER NOT NULL DEFAULT 0
    );
    """,
    # Samples acked but not stored because their timestamp lay outside the accepted window (protocol.out_of_window).
    """
    ALTER TABLE hosts ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
    """,
    # The latest snapshot (a list whose members come and go: processes ...) per host and kind; each replaces the
    # previous one (mbot.snapshots, docs/protocol.md "Snapshots"). `ts` is the agent's clock, `received` the server's.
    """
    CREATE TABLE snapshots (
        host_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        v INTEGER NOT NULL,
        ts REAL NOT NULL,
        received REAL NOT NULL,
        items TEXT NOT NULL,
        PRIMARY KEY (host_id, kind)
    );
    """,
    # Quiet hours per Telegram user (/quiet, mbot.quiet): a daily window of the wall clock in minutes after midnight.
    """
    CREATE TABLE quiet_hours (
        user_id INTEGER PRIMARY KEY,
        start_minute INTEGER NOT NULL,
        end_minute INTEGER NOT NULL
    );
    """,
    # Alert messages (mbot/telegram/alert_delivery.py): one row per alert that fired (metric "offline": a host that
    # went offline) and the chat message of its life, which its reminders reply to and its end edits; and, for
    # CPU/RAM/GPU alerts, the top processes when it fired (JSON items of the `processes` snapshot).
    """
    CREATE TABLE alert_messages (
        id INTEGER PRIMARY KEY,
        host_id INTEGER NOT NULL,
        metric TEXT NOT NULL,
        series TEXT NOT NULL,
        fired REAL NOT NULL,
        procs TEXT,
        chat_id INTEGER,
        message_id INTEGER,
        photo INTEGER NOT NULL DEFAULT 0,
        resolved REAL
    );
    CREATE INDEX alert_messages_open ON alert_messages (host_id, metric, series) WHERE resolved IS NULL;
    """,
    # Checks from the host (mbot.checks): what each host's agent probes. The name labels its series and alerts.
    """
    CREATE TABLE checks (
        id INTEGER PRIMARY KEY,
        host_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        every REAL NOT NULL,
        down_after INTEGER NOT NULL,
        created REAL NOT NULL,
        UNIQUE (host_id, name)
    );
    """,
    # Teams (mbot.access): roles of other users on a host (the owner stays hosts.owner), share links (an `invites`
    # row of kind "share" naming its host and role), what the audit says a share or removal concerned, the names
    # people go by (for /shares and /unshare), each chat's default host (/set), and one alert message per
    # recipient: alert_messages rows now carry their chat from the start (see add_alert_message).
    """
    CREATE TABLE host_roles (
        host_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        role TEXT NOT NULL,
        granted_by INTEGER NOT NULL,
        granted_at REAL NOT NULL,
        PRIMARY KEY (host_id, user_id)
    );
    CREATE INDEX host_roles_user ON host_roles (user_id);
    ALTER TABLE invites ADD COLUMN host_id INTEGER;
    ALTER TABLE invites ADD COLUMN role TEXT;
    ALTER TABLE audit ADD COLUMN target INTEGER;
    CREATE TABLE people (
        user_id INTEGER PRIMARY KEY,
        username TEXT,
        first_name TEXT
    );
    CREATE TABLE chat_defaults (
        chat_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        host_id INTEGER NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    );
    """,
    # Groups (mbot/telegram/groups.py): a host's alerts also go to the groups its owner bound it to (/bind; the
    # forum topic, if bound in one), an alert's copy in each chat is its own alert_messages row (its topic kept),
    # and status pages (/statuspage): one message per (chat, user) that the bot keeps current, with what it last
    # said and when, so a restart goes on editing the same message and never edits it more than once a minute.
    """
    CREATE TABLE chat_bindings (
        host_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        thread_id INTEGER,
        bound_by INTEGER NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (host_id, chat_id)
    );
    CREATE INDEX chat_bindings_chat ON chat_bindings (chat_id);
    ALTER TABLE alert_messages ADD COLUMN thread_id INTEGER;
    CREATE TABLE status_pages (
        chat_id INTEGER NOT NULL,
        owner INTEGER NOT NULL,
        thread_id INTEGER,
        message_id INTEGER NOT NULL,
        hosts TEXT,
        text TEXT NOT NULL,
        edited REAL NOT NULL,
        lang TEXT NOT NULL DEFAULT 'en',
        PRIMARY KEY (chat_id, owner)
    );
    """,
    # The chat's language per user (mbot.i18n): what /lang chose (NULL: follow Telegram) and the language_code
    # Telegram last sent, for messages that answer no update (alerts, notices).
    """
    CREATE TABLE user_languages (
        user_id INTEGER PRIMARY KEY,
        chosen TEXT,
        seen TEXT
    );
    """,
    # Folded alert messages (mbot/telegram/alert_fold.py): one chat message for several alerts that started
    # together; `body` is its head, a line per alert (alert_messages ids) and its host buttons, as JSON, kept while
    # one of its alerts lasts so that their ends edit their lines after a restart too.
    """
    CREATE TABLE alert_folds (
        id INTEGER PRIMARY KEY,
        body TEXT NOT NULL
    );
    """,
    # The daily digest per Telegram user (/digest, mbot.digest): when (minutes after midnight, MBOT_TZ) and when the
    # last one went out (server time), so that a restart neither repeats nor skips one.
    """
    CREATE TABLE digests (
        user_id INTEGER PRIMARY KEY,
        minute INTEGER NOT NULL,
        last_sent REAL NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer mbot."""


def connect(path: Path | str, *, readonly: bool = False, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """A connection with mbot's pragmas; the schema is migrated unless `readonly`."""
    if not readonly:
        _private(Path(path))
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _private(path: Path) -> None:
    """The database holds every host's latest values and the secrets' hashes: readable by its owner only. SQLite
    gives the -wal and -shm files the database file's mode, so creating it 0600 covers them too."""
    if str(path) == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass  # sqlite3.connect reports a path it cannot use, with a better message


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"database schema v{version} is newer than this mbot (v{SCHEMA_VERSION})")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] != number:
                conn.execute("ROLLBACK")
                continue
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises: how a process without the server's writer
    (the CLI) writes. IMMEDIATE takes the write lock up front, so a busy server makes it wait (busy_timeout) at the
    start rather than fail half-way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        # SQLite may have rolled back already (disk full): a second ROLLBACK would fail and hide the cause.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "item") -> Iterator[None]:
    """Run the block in a SAVEPOINT of the open transaction, so one item that fails takes back only its own writes.

    An exception from the block rolls the savepoint back and goes on to the caller, which isolates the item, except
    sqlite3.OperationalError (disk full, locked: the database itself), which is left to the caller's whole
    transaction: waiting helps those, and SQLite may already have rolled everything back."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except sqlite3.OperationalError:
        raise
    except Exception:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


class Database:
    """The read side: each worker thread gets its own connection (sqlite3 objects are not shared)."""

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        self._local = threading.local()
        self.limiter = trio.CapacityLimiter(4)
        if migrate:  # (a listener process only reads what the main process made: mbot/listener.py)
            connect(path).close()  # create and migrate once, up front

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, readonly=True)
        return conn

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in a worker thread."""
        return await trio.to_thread.run_sync(self._run, fn, args, limiter=self.limiter)

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return fn(self._conn(), *args)


# --- values --------------------------------------------------------------------------------------------------

_FLOAT32 = "f"


def pack_values(values: list[float]) -> bytes:
    data = array(_FLOAT32, values)
    if sys.byteorder == "big":  # stored little-endian so a database file moves between machines
        data.byteswap()
    return data.tobytes()


# --- hosts ---------------------------------------------------------------------------------------------------


_HOST_COLUMNS = ("id, name, owner, key_id, created, facts, epoch, last_seq, last_ts, last_seen, last_metrics, "
                 "samples_count, revoked, dropped, rejected")


def _json_object(row: sqlite3.Row, column: str) -> dict[str, Any]:
    """A JSON column as a dict; a damaged value reads as empty (and says so) rather than failing every reader."""
    text = row[column]
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        log.warning("host %s: column %s holds damaged JSON; read as empty", row["id"], column)
        return {}
    return value if isinstance(value, dict) else {}


def _inserted_id(cur: sqlite3.Cursor) -> int:
    # sqlite3 leaves lastrowid None only when no row was inserted, which a successful INSERT rules out.
    assert cur.lastrowid is not None
    return cur.lastrowid


def _host(row: sqlite3.Row) -> Host:
    return Host(
        id=row["id"], name=row["name"], owner=row["owner"], key_id=row["key_id"], created=row["created"],
        facts=_json_object(row, "facts"), epoch=row["epoch"], last_seq=row["last_seq"],
        last_ts=row["last_ts"], last_seen=row["last_seen"], last_metrics=_json_object(row, "last_metrics"),
        samples_count=row["samples_count"], revoked=row["revoked"], dropped=row["dropped"],
        rejected=row["rejected"],
    )


def host_by_secret_hash(conn: sqlite3.Connection, secret_hash: str) -> Host | None:
    row = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE secret_hash = ?", (secret_hash,)).fetchone()
    return _host(row) if row else None


def host_by_id(conn: sqlite3.Connection, host_id: int) -> Host | None:
    row = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE id = ?", (host_id,)).fetchone()
    return _host(row) if row else None


def list_hosts(conn: sqlite3.Connection, owner: int | None = None) -> list[Host]:
    if owner is None:
        rows = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts ORDER BY owner, name")
    else:
        rows = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE owner = ? ORDER BY name", (owner,))
    return [_host(row) for row in rows]


def insert_host(conn: sqlite3.Connection, *, name: str, owner: int, key_id: str, secret_hash: str,
                created: float) -> int:
    cur = conn.execute(
        "INSERT INTO hosts (name, owner, key_id, secret_hash, created) VALUES (?, ?, ?, ?, ?)",
        (name, owner, key_id, secret_hash, created),
    )
    return _inserted_id(cur)


def count_hosts(conn: sqlite3.Connection, owner: int | None = None) -> int:
    """The owner's hosts, or every host (a read of `hosts` that the health check uses to see the database works)."""
    if owner is None:
        return int(conn.execute("SELECT count(*) FROM hosts").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM hosts WHERE owner = ?", (owner,)).fetchone()[0])


def hosts_by_key_prefix(conn: sqlite3.Connection, owner: int, prefix: str) -> list[Host]:
    rows = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE owner = ? AND substr(key_id, 1, ?) = ?",
                        (owner, len(prefix), prefix))
    return [_host(row) for row in rows]


def hosts_named(conn: sqlite3.Connection, name: str, owner: int | None = None) -> list[Host]:
    """The hosts (of one owner, or of all) whose name is `name` but for case. NOCASE folds ASCII letters only, and
    host names are ASCII (service.NAME_RULE): no Unicode look-alike (the Kelvin sign) ever matches a name."""
    if owner is None:
        rows = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE name = ? COLLATE NOCASE ORDER BY owner, name",
                            (name,))
    else:
        rows = conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE owner = ? AND name = ? COLLATE NOCASE "
                            "ORDER BY name", (owner, name))
    return [_host(row) for row in rows]


def rename_host(conn: sqlite3.Connection, host_id: int, name: str) -> None:
    conn.execute("UPDATE hosts SET name = ? WHERE id = ?", (name, host_id))


def set_owner(conn: sqlite3.Connection, host_id: int, owner: int, name: str) -> None:
    conn.execute("UPDATE hosts SET owner = ?, name = ? WHERE id = ?", (owner, name, host_id))


def set_secret(conn: sqlite3.Connection, host_id: int, secret_hash: str, revoked: float | None) -> None:
    conn.execute("UPDATE hosts SET secret_hash = ?, revoked = ? WHERE id = ?", (secret_hash, revoked, host_id))


def delete_host(conn: sqlite3.Connection, host_id: int) -> None:
    conn.execute("DELETE FROM alert_rules WHERE host_id = ?", (host_id,))
    for table in AGG_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM samples WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM snapshots WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM alert_messages WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM checks WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM host_roles WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM chat_defaults WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM invites WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM chat_bindings WHERE host_id = ?", (host_id,))
    conn.execute("DELETE FROM hosts WHERE id = ?", (host_id,))


def add_audit(conn: sqlite3.Connection, *, ts: float, user_id: int, host_id: int | None, host_name: str,
              action: str, outcome: str, target: int | None = None) -> int:
    """`user_id` did `action` (reboot, shutdown, share, unshare) on the host; `target`: the user a share or a
    removal concerned."""
    cur = conn.execute("INSERT INTO audit (ts, user_id, host_id, host_name, action, outcome, target) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (ts, user_id, host_id, host_name, action, outcome, target))
    return _inserted_id(cur)


def set_audit_outcome(conn: sqlite3.Connection, audit_id: int, outcome: str) -> None:
    conn.execute("UPDATE audit SET outcome = ? WHERE id = ?", (outcome, audit_id))


# --- history -------------------------------------------------------------------------------------------------


# The aggregate tables (mbot.history folds raw samples into them): table -> bucket width in seconds, finest first.
AGG_TABLES: dict[str, int] = {"agg_1m": 60, "agg_10m": 600, "agg_1h": 3600}
RawRow = tuple[int, int, Any, int, Any]  # rowid, host_id, ts, layout_id, vals: as stored, maybe poison (history)
AggRow = tuple[int, int, bytes, bytes, bytes]  # bucket, count, mins, avgs, maxs (float32 little-endian)


def _agg_table(table: str) -> str:
    # Table names are put into SQL text (SQLite cannot bind them): only the schema's own ever get there.
    if table not in AGG_TABLES:
        raise ValueError(f"not an aggregate table: {table!r}")
    return table


def layout_names(conn: sqlite3.Connection, layout_id: int) -> list[str]:
    """The series names, in order, of the values packed in rows of this layout."""
    names: list[str] = json.loads(conn.execute("SELECT names FROM layouts WHERE id = ?", (layout_id,)).fetchone()[0])
    return names


def raw_rows_after(conn: sqlite3.Connection, rowid: int, limit: int) -> list[RawRow]:
    """The next `limit` raw rows above `rowid`, in arrival order (the rollup's next step)."""
    return conn.execute("SELECT rowid, host_id, ts, layout_id, vals FROM samples WHERE rowid > ? ORDER BY rowid "
                        "LIMIT ?", (rowid, limit)).fetchall()


def raw_rows_of_host(conn: sqlite3.Connection, host_id: int, start: float,
                     end: float) -> Iterator[tuple[float, int, bytes]]:
    """(ts, layout_id, vals) of one host's raw rows with start <= ts <= end, oldest first."""
    return iter(conn.execute("SELECT ts, layout_id, vals FROM samples WHERE host_id = ? AND ts BETWEEN ? AND ? "
                             "ORDER BY ts", (host_id, start, end)))


def raw_rows_of_host_after(conn: sqlite3.Connection, host_id: int, rowid: int) -> Iterator[tuple[float, int, bytes]]:
    """(ts, layout_id, vals) of one host's raw rows above `rowid` (not rolled up yet), in no particular order."""
    return iter(conn.execute("SELECT ts, layout_id, vals FROM samples WHERE rowid > ? AND host_id = ?",
                             (rowid, host_id)))


def agg_rows_of_host(conn: sqlite3.Connection, table: str, host_id: int, start: float,
                     end: float) -> Iterator[tuple[int, int, int, bytes, bytes, bytes]]:
    """(bucket, layout_id, count, mins, avgs, maxs) of one host with start <= bucket <= end, oldest first."""
    return iter(conn.execute(f"SELECT bucket, layout_id, count, mins, avgs, maxs FROM {_agg_table(table)} "
                             "WHERE host_id = ? AND bucket BETWEEN ? AND ? ORDER BY bucket", (host_id, start, end)))


AggKey = tuple[int, int, int]  # host_id, bucket, layout_id
AggPut = tuple[int, int, int, int, bytes, bytes, bytes]  # host_id, bucket, layout_id, count, mins, avgs, maxs
_AGG_KEYS_PER_QUERY = 300  # 900 parameters: under SQLite's oldest limit (999)


def agg_rows(conn: sqlite3.Connection, table: str,
             keys: Sequence[AggKey]) -> dict[AggKey, tuple[int, bytes, bytes, bytes]]:
    """(count, mins, avgs, maxs) of the buckets that exist among `keys`, by key: one query per few hundred keys
    (a join on the primary key) rather than one per key."""
    found: dict[AggKey, tuple[int, bytes, bytes, bytes]] = {}
    for start in range(0, len(keys), _AGG_KEYS_PER_QUERY):
        chunk = keys[start:start + _AGG_KEYS_PER_QUERY]
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        cursor = conn.execute(
            f"SELECT a.host_id, a.bucket, a.layout_id, a.count, a.mins, a.avgs, a.maxs FROM (VALUES {values}) AS k "
            f"JOIN {_agg_table(table)} AS a ON a.host_id = k.column1 AND a.bucket = k.column2 "
            "AND a.layout_id = k.column3", [part for key in chunk for part in key])
        for row in cursor:
            found[row[0], row[1], row[2]] = (row[3], row[4], row[5], row[6])
    return found


def put_agg_rows(conn: sqlite3.Connection, table: str, rows: Iterable[AggPut]) -> None:
    conn.executemany(f"INSERT OR REPLACE INTO {_agg_table(table)} (host_id, bucket, layout_id, count, mins, avgs, "
                     "maxs) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def put_agg_row(conn: sqlite3.Connection, table: str, host_id: int, bucket: int, layout_id: int, count: int,
                mins: bytes, avgs: bytes, maxs: bytes) -> None:
    put_agg_rows(conn, table, [(host_id, bucket, layout_id, count, mins, avgs, maxs)])


def delete_raw_rows(conn: sqlite3.Connection, *, up_to_rowid: int, before: float, after: float, limit: int) -> int:
    """Delete at most `limit` raw rows at or below `up_to_rowid` whose ts is before `before` or after `after`;
    returns how many went."""
    return conn.execute(
        "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE rowid <= ? AND (ts < ? OR ts > ?) "
        "ORDER BY rowid LIMIT ?)", (up_to_rowid, before, after, limit)).rowcount


def delete_agg_rows(conn: sqlite3.Connection, table: str, host_id: int, *, before: float, after: float) -> int:
    """Delete one host's buckets that start before `before` or after `after`; returns how many went."""
    return conn.execute(f"DELETE FROM {_agg_table(table)} WHERE host_id = ? AND (bucket < ? OR bucket > ?)",
                        (host_id, before, after)).rowcount


def host_ids(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM hosts")]


# --- alert rules (mbot.alerting keeps them as JSON specs) -------------------------------------------------------


def alert_rule_specs(conn: sqlite3.Connection) -> list[str]:
    return [spec for (spec,) in conn.execute("SELECT spec FROM alert_rules ORDER BY host_id, metric")]


def put_alert_rule(conn: sqlite3.Connection, host_id: int, metric: str, spec: str) -> None:
    conn.execute("INSERT INTO alert_rules (host_id, metric, spec) VALUES (?, ?, ?) "
                 "ON CONFLICT (host_id, metric) DO UPDATE SET spec = excluded.spec", (host_id, metric, spec))


def delete_alert_rule(conn: sqlite3.Connection, host_id: int, metric: str) -> bool:
    return conn.execute("DELETE FROM alert_rules WHERE host_id = ? AND metric = ?", (host_id, metric)).rowcount > 0


# The rollup's watermark: every raw row up to this rowid is folded into the aggregates (mbot.history).
ROLLUP_WATERMARK = "rollup.rowid"


def next_sample_rowid(conn: sqlite3.Connection) -> int:
    """The rowid the next raw sample must get. SQLite would reuse rowids once the newest rows are deleted (a wiped
    host, retention of everything after a long pause), and a reused rowid at or below the rollup's watermark would
    never be rolled up: so the writer numbers rows itself, above both."""
    top = conn.execute("SELECT max(rowid) FROM samples").fetchone()[0] or 0
    return max(top, int(get_kv(conn, ROLLUP_WATERMARK) or 0)) + 1


def contents(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(schema version, hosts, raw samples) of a database file, as a backup's manifest and restore report them."""
    return (conn.execute("PRAGMA user_version").fetchone()[0], conn.execute("SELECT count(*) FROM hosts").fetchone()[0],
            conn.execute("SELECT count(*) FROM samples").fetchone()[0])


def intact(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("PRAGMA quick_check").fetchone()[0] == "ok")


def scratch(conn: sqlite3.Connection) -> None:
    """A throwaway database (a backup's copy until it is archived): no journal, no fsync."""
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")


def get_kv(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_kv(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (key, value))



# --- snapshots -----------------------------------------------------------------------------------------------


def put_snapshot(conn: sqlite3.Connection, host_id: int, kind: str, v: int, ts: float, received: float,
                 items_json: str) -> None:
    """Replace the host's latest snapshot of this kind."""
    conn.execute("INSERT INTO snapshots (host_id, kind, v, ts, received, items) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT (host_id, kind) DO UPDATE SET v = excluded.v, ts = excluded.ts, "
                 "received = excluded.received, items = excluded.items",
                 (host_id, kind, v, ts, received, items_json))


def services_items(conn: sqlite3.Connection, host_id: int) -> list[dict[str, Any]] | None:
    """The host's latest `services` snapshot's items (None: it sent none: no systemd, or an older agent)."""
    latest = latest_snapshot(conn, host_id, "services")
    return None if latest is None else latest.items


def set_inventory(conn: sqlite3.Connection, host_id: int, inventory_json: str) -> None:
    """Replace the inventory among the host's hello facts (an `inventory` snapshot: it changed since the hello)."""
    conn.execute("UPDATE hosts SET facts = json_set(CASE WHEN json_valid(facts) THEN facts ELSE '{}' END, "
                 "'$.inventory', json(?)) WHERE id = ?", (inventory_json, host_id))


def snapshot_items(host_id: int, kind: str, text: str) -> list[dict[str, Any]]:
    """A damaged items column reads as empty (and says so) rather than failing every reader."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError, TypeError):
        value = None
    if not isinstance(value, list):
        log.warning("host %s: the stored %s snapshot is damaged; read as empty", host_id, kind)
        return []
    return [item for item in value if isinstance(item, dict)]


def latest_snapshot(conn: sqlite3.Connection, host_id: int, kind: str) -> StoredSnapshot | None:
    row = conn.execute("SELECT v, ts, received, items FROM snapshots WHERE host_id = ? AND kind = ?",
                       (host_id, kind)).fetchone()
    if row is None:
        return None
    return StoredSnapshot(host_id, kind, row[0], row[1], row[2], snapshot_items(host_id, kind, row[3]))


def latest_snapshot_json(conn: sqlite3.Connection, host_id: int, kind: str) -> tuple[int, str] | None:
    """(v, items as stored) of the host's latest snapshot of a kind, not decoded (snapshot_items decodes)."""
    row = conn.execute("SELECT v, items FROM snapshots WHERE host_id = ? AND kind = ?", (host_id, kind)).fetchone()
    return None if row is None else (row[0], row[1])


def snapshots_of_host(conn: sqlite3.Connection, host_id: int) -> list[StoredSnapshot]:
    """The latest snapshot of each kind the host sent, by kind."""
    rows = conn.execute("SELECT kind, v, ts, received, items FROM snapshots WHERE host_id = ? ORDER BY kind",
                        (host_id,))
    return [StoredSnapshot(host_id, row[0], row[1], row[2], row[3], snapshot_items(host_id, row[0], row[4]))
            for row in rows]


# --- quiet hours (mbot.quiet) ---------------------------------------------------------------------------------


def quiet_hours(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """Every user's quiet window: user id -> (start, end) in minutes after midnight."""
    return {row[0]: (row[1], row[2]) for row in conn.execute(
        "SELECT user_id, start_minute, end_minute FROM quiet_hours")}


def set_quiet_hours(conn: sqlite3.Connection, user_id: int, window: tuple[int, int] | None) -> None:
    """Set a user's quiet window, or (None) remove it."""
    if window is None:
        conn.execute("DELETE FROM quiet_hours WHERE user_id = ?", (user_id,))
    else:
        conn.execute("INSERT INTO quiet_hours (user_id, start_minute, end_minute) VALUES (?, ?, ?) "
                     "ON CONFLICT (user_id) DO UPDATE SET start_minute = excluded.start_minute, "
                     "end_minute = excluded.end_minute", (user_id, *window))


def user_languages(conn: sqlite3.Connection) -> dict[int, tuple[str | None, str | None]]:
    """Every user's language: user id -> (chosen with /lang or None, last seen language_code or None)."""
    return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT user_id, chosen, seen FROM user_languages")}


def set_user_language(conn: sqlite3.Connection, user_id: int, chosen: str | None, seen: str | None) -> None:
    conn.execute("INSERT INTO user_languages (user_id, chosen, seen) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                 "DO UPDATE SET chosen = excluded.chosen, seen = excluded.seen", (user_id, chosen, seen))


# --- alert messages (mbot/telegram/alert_delivery.py) ----------------------------------------------------------

ALERT_MESSAGE_KEEP = 7 * 86400.0  # how long a resolved alert's row (its Processes button) is kept


def _alert_message(row: sqlite3.Row) -> AlertMessage:
    procs = None if row["procs"] is None else snapshot_items(row["host_id"], "alert processes", row["procs"])
    return AlertMessage(row["id"], row["host_id"], row["metric"], row["series"], row["fired"], procs, row["chat_id"],
                        row["message_id"], bool(row["photo"]), row["resolved"], row["thread_id"])


def add_alert_message(conn: sqlite3.Connection, host_id: int, metric: str, series: str, fired: float,
                      procs_json: str | None, chat_id: int | None = None, thread_id: int | None = None) -> int:
    """A new alert life in `chat_id` (each chat an alert goes to has its own row); an older open one of the same
    alert in that chat is closed (it can only be left from a crash), and rows resolved more than
    ALERT_MESSAGE_KEEP ago go."""
    conn.execute("UPDATE alert_messages SET resolved = ? WHERE host_id = ? AND metric = ? AND series = ? "
                 "AND resolved IS NULL AND (chat_id IS NULL OR chat_id IS ?)", (fired, host_id, metric, series,
                                                                                  chat_id))
    conn.execute("DELETE FROM alert_messages WHERE resolved < ?", (fired - ALERT_MESSAGE_KEEP,))
    cur = conn.execute("INSERT INTO alert_messages (host_id, metric, series, fired, procs, chat_id, thread_id) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (host_id, metric, series, fired, procs_json, chat_id,
                                                        thread_id))
    return _inserted_id(cur)


def set_alert_message_sent(conn: sqlite3.Connection, alert_id: int, chat_id: int, message_id: int,
                           photo: bool) -> None:
    conn.execute("UPDATE alert_messages SET chat_id = ?, message_id = ?, photo = ? WHERE id = ?",
                 (chat_id, message_id, int(photo), alert_id))


def resolve_alert_message(conn: sqlite3.Connection, alert_id: int, ts: float) -> None:
    conn.execute("UPDATE alert_messages SET resolved = ? WHERE id = ? AND resolved IS NULL", (ts, alert_id))


def alert_message(conn: sqlite3.Connection, alert_id: int) -> AlertMessage | None:
    row = conn.execute("SELECT * FROM alert_messages WHERE id = ?", (alert_id,)).fetchone()
    return None if row is None else _alert_message(row)


def open_alert_messages(conn: sqlite3.Connection) -> list[AlertMessage]:
    """Alerts that have not ended, oldest first (at start: the threads a restart must keep)."""
    rows = conn.execute("SELECT * FROM alert_messages WHERE resolved IS NULL ORDER BY id")
    return [_alert_message(row) for row in rows]


def add_alert_fold(conn: sqlite3.Connection, body: str) -> int:
    return _inserted_id(conn.execute("INSERT INTO alert_folds (body) VALUES (?)", (body,)))


def set_alert_fold(conn: sqlite3.Connection, fold_id: int, body: str | None) -> None:
    """A folded message's new body, or (None: none of its alerts lasts) no row any more."""
    if body is None:
        conn.execute("DELETE FROM alert_folds WHERE id = ?", (fold_id,))
    else:
        conn.execute("UPDATE alert_folds SET body = ? WHERE id = ?", (body, fold_id))


def alert_folds(conn: sqlite3.Connection) -> dict[int, str]:
    return {row[0]: row[1] for row in conn.execute("SELECT id, body FROM alert_folds")}


def alerts_fired_since(conn: sqlite3.Connection, since: float) -> dict[int, int]:
    """Alerts that fired since then, per host: the digest's count. Each chat told has its own alert_messages row:
    the owner's copies are the ones counted."""
    return {row[0]: row[1] for row in conn.execute(
        "SELECT m.host_id, count(*) FROM alert_messages m JOIN hosts h ON h.id = m.host_id "
        "WHERE m.fired >= ? AND m.chat_id IS h.owner GROUP BY m.host_id", (since,))}


# --- the daily digest (mbot.digest) -------------------------------------------------------------------------------


def digests(conn: sqlite3.Connection) -> dict[int, tuple[int, float]]:
    """Every user's digest: user id -> (minute of the day, when the last one went out)."""
    return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT user_id, minute, last_sent FROM digests")}


def set_digest(conn: sqlite3.Connection, user_id: int, minute: int | None, last_sent: float) -> None:
    """Set a user's digest time (None: off), or (same minute) record that one went out."""
    if minute is None:
        conn.execute("DELETE FROM digests WHERE user_id = ?", (user_id,))
    else:
        conn.execute("INSERT INTO digests (user_id, minute, last_sent) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                     "DO UPDATE SET minute = excluded.minute, last_sent = excluded.last_sent",
                     (user_id, minute, last_sent))


# --- checks from the host (mbot.checks) -------------------------------------------------------------------------

# Bumped with every change of `checks`, so a running server notices what the CLI (another process) changed.
CHECKS_VERSION = "checks.version"


def _check_spec(row: sqlite3.Row) -> CheckSpec:
    return CheckSpec(row["id"], row["host_id"], row["name"], row["target"], row["every"], row["down_after"])


def checks_of_host(conn: sqlite3.Connection, host_id: int) -> list[CheckSpec]:
    return [_check_spec(row) for row in conn.execute("SELECT * FROM checks WHERE host_id = ? ORDER BY id",
                                                      (host_id,))]


def all_checks(conn: sqlite3.Connection) -> list[CheckSpec]:
    return [_check_spec(row) for row in conn.execute("SELECT * FROM checks ORDER BY host_id, id")]


def count_checks_of_owner(conn: sqlite3.Connection, owner: int) -> int:
    return conn.execute("SELECT count(*) FROM checks JOIN hosts ON hosts.id = checks.host_id WHERE hosts.owner = ?",
                        (owner,)).fetchone()[0]


def insert_check(conn: sqlite3.Connection, host_id: int, name: str, target: str, every: float, down_after: int,
                 created: float) -> int:
    cur = conn.execute("INSERT INTO checks (host_id, name, target, every, down_after, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (host_id, name, target, every, down_after, created))
    _bump_checks(conn)
    return _inserted_id(cur)


def delete_check(conn: sqlite3.Connection, check_id: int) -> None:
    conn.execute("DELETE FROM checks WHERE id = ?", (check_id,))
    _bump_checks(conn)


def checks_version(conn: sqlite3.Connection) -> int:
    return int(get_kv(conn, CHECKS_VERSION) or 0)


def _bump_checks(conn: sqlite3.Connection) -> None:
    set_kv(conn, CHECKS_VERSION, str(checks_version(conn) + 1))


# --- teams: roles on hosts, names, default hosts (mbot.access) ---------------------------------------------------


def role_on(conn: sqlite3.Connection, host_id: int, user_id: int) -> str | None:
    """The role `user_id` was granted on the host (not ownership: that is hosts.owner)."""
    row = conn.execute("SELECT role FROM host_roles WHERE host_id = ? AND user_id = ?", (host_id, user_id)).fetchone()
    return None if row is None else str(row[0])


def grant_role(conn: sqlite3.Connection, host_id: int, user_id: int, role: str, granted_by: int, now: float) -> None:
    conn.execute("INSERT INTO host_roles (host_id, user_id, role, granted_by, granted_at) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (host_id, user_id) DO UPDATE SET role = excluded.role, "
                 "granted_by = excluded.granted_by, granted_at = excluded.granted_at",
                 (host_id, user_id, role, granted_by, now))


def remove_role(conn: sqlite3.Connection, host_id: int, user_id: int) -> bool:
    """The role goes, and with it whatever default (/set) the user had made of the host in any chat."""
    gone = conn.execute("DELETE FROM host_roles WHERE host_id = ? AND user_id = ?", (host_id, user_id)).rowcount
    conn.execute("DELETE FROM chat_defaults WHERE host_id = ? AND user_id = ?", (host_id, user_id))
    return gone > 0


def roles_of_host(conn: sqlite3.Connection, host_id: int) -> list[tuple[int, str, str | None, str | None]]:
    """(user id, role, username, first name) of everyone granted a role on the host, oldest grant first."""
    rows = conn.execute("SELECT r.user_id, r.role, p.username, p.first_name FROM host_roles r "
                        "LEFT JOIN people p ON p.user_id = r.user_id WHERE r.host_id = ? ORDER BY r.granted_at, "
                        "r.user_id", (host_id,))
    return [(int(row[0]), str(row[1]), row[2], row[3]) for row in rows]


def hosts_of_user(conn: sqlite3.Connection, user_id: int) -> list[tuple[Host, str]]:
    """Every host `user_id` may see with their role on it: their own ("owner") by name, then those shared with
    them by name. Two queries on indexed columns, whatever the number of hosts elsewhere."""
    own = [(host, "owner") for host in list_hosts(conn, user_id)]
    rows = conn.execute(f"SELECT {_HOST_COLUMNS.replace('id,', 'hosts.id,', 1)}, r.role AS granted FROM hosts "
                        "JOIN host_roles r ON r.host_id = hosts.id WHERE r.user_id = ? AND hosts.owner != ? "
                        "ORDER BY hosts.name", (user_id, user_id))
    return own + [(_host(row), str(row["granted"])) for row in rows]


def set_person(conn: sqlite3.Connection, user_id: int, username: str | None, first_name: str | None) -> None:
    conn.execute("INSERT INTO people (user_id, username, first_name) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                 "DO UPDATE SET username = excluded.username, first_name = excluded.first_name",
                 (user_id, username, first_name))


def people(conn: sqlite3.Connection) -> dict[int, tuple[str | None, str | None]]:
    return {int(row[0]): (row[1], row[2]) for row in conn.execute("SELECT user_id, username, first_name FROM people")}


def chat_default(conn: sqlite3.Connection, chat_id: int, user_id: int) -> int | None:
    row = conn.execute("SELECT host_id FROM chat_defaults WHERE chat_id = ? AND user_id = ?",
                       (chat_id, user_id)).fetchone()
    return None if row is None else int(row[0])


def set_chat_default(conn: sqlite3.Connection, chat_id: int, user_id: int, host_id: int | None) -> None:
    if host_id is None:
        conn.execute("DELETE FROM chat_defaults WHERE chat_id = ? AND user_id = ?", (chat_id, user_id))
    else:
        conn.execute("INSERT INTO chat_defaults (chat_id, user_id, host_id) VALUES (?, ?, ?) ON CONFLICT "
                     "(chat_id, user_id) DO UPDATE SET host_id = excluded.host_id", (chat_id, user_id, host_id))
# --- groups: bindings and status pages (mbot/telegram/groups.py) -----------------------------------------------


def bind_host(conn: sqlite3.Connection, host_id: int, chat_id: int, thread_id: int | None, user_id: int,
              now: float) -> None:
    """The host's alerts also go to chat_id (in topic thread_id); binding again moves it to that topic."""
    conn.execute("INSERT INTO chat_bindings (host_id, chat_id, thread_id, bound_by, created) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (host_id, chat_id) DO UPDATE SET thread_id = excluded.thread_id, "
                 "bound_by = excluded.bound_by", (host_id, chat_id, thread_id, user_id, now))


def unbind_host(conn: sqlite3.Connection, host_id: int, chat_id: int) -> bool:
    return conn.execute("DELETE FROM chat_bindings WHERE host_id = ? AND chat_id = ?",
                        (host_id, chat_id)).rowcount > 0


def bindings_of_host(conn: sqlite3.Connection, host_id: int) -> list[Binding]:
    rows = conn.execute("SELECT * FROM chat_bindings WHERE host_id = ? ORDER BY chat_id", (host_id,))
    return [Binding(r["host_id"], r["chat_id"], r["thread_id"], r["bound_by"]) for r in rows]


def bindings_of_chat(conn: sqlite3.Connection, chat_id: int) -> list[Binding]:
    rows = conn.execute("SELECT * FROM chat_bindings WHERE chat_id = ? ORDER BY host_id", (chat_id,))
    return [Binding(r["host_id"], r["chat_id"], r["thread_id"], r["bound_by"]) for r in rows]


def forget_chat(conn: sqlite3.Connection, chat_id: int) -> tuple[int, int]:
    """The bot left chat_id: its bindings and status pages go. Returns how many of each."""
    bindings = conn.execute("DELETE FROM chat_bindings WHERE chat_id = ?", (chat_id,)).rowcount
    pages = conn.execute("DELETE FROM status_pages WHERE chat_id = ?", (chat_id,)).rowcount
    return bindings, pages


def move_chat(conn: sqlite3.Connection, old: int, new: int) -> tuple[int, int]:
    """A group became a supergroup with a new id: its bindings move there (without their topic: the new chat's
    topics are new); its status pages go (their messages are the old chat's). Returns how many of each."""
    moved = conn.execute("UPDATE OR IGNORE chat_bindings SET chat_id = ?, thread_id = NULL WHERE chat_id = ?",
                         (new, old)).rowcount
    conn.execute("DELETE FROM chat_bindings WHERE chat_id = ?", (old,))
    pages = conn.execute("DELETE FROM status_pages WHERE chat_id = ?", (old,)).rowcount
    return moved, pages


def _status_page(row: sqlite3.Row) -> StatusPage:
    hosts = None
    if row["hosts"] is not None:
        try:
            hosts = tuple(int(h) for h in json.loads(row["hosts"]))
        except (ValueError, TypeError):
            log.warning("status page of user %d in chat %d: damaged host list; it shows all their hosts",
                        row["owner"], row["chat_id"])
    return StatusPage(row["chat_id"], row["owner"], row["thread_id"], row["message_id"], hosts, row["text"],
                      row["edited"], row["lang"])


def status_pages(conn: sqlite3.Connection) -> list[StatusPage]:
    return [_status_page(row) for row in conn.execute("SELECT * FROM status_pages ORDER BY chat_id, owner")]


def put_status_page(conn: sqlite3.Connection, page: StatusPage) -> None:
    """Insert or replace the (chat, owner) page."""
    hosts = None if page.hosts is None else json.dumps(list(page.hosts))
    conn.execute("INSERT OR REPLACE INTO status_pages (chat_id, owner, thread_id, message_id, hosts, text, edited, "
                 "lang) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (page.chat_id, page.owner, page.thread_id, page.message_id,
                                                           hosts, page.text, page.edited, page.lang))


def page_edited(conn: sqlite3.Connection, chat_id: int, owner: int, message_id: int, text: str,
                edited: float) -> None:
    conn.execute("UPDATE status_pages SET text = ?, edited = ? WHERE chat_id = ? AND owner = ? AND message_id = ?",
                 (text, edited, chat_id, owner, message_id))


def delete_status_page(conn: sqlite3.Connection, chat_id: int, owner: int, message_id: int | None = None) -> bool:
    """Stop a page (`message_id`: only if it is still that message, not a newer page of the same user)."""
    if message_id is None:
        cur = conn.execute("DELETE FROM status_pages WHERE chat_id = ? AND owner = ?", (chat_id, owner))
    else:
        cur = conn.execute("DELETE FROM status_pages WHERE chat_id = ? AND owner = ? AND message_id = ?",
                           (chat_id, owner, message_id))
    return cur.rowcount > 0


def covered_runs(conn: sqlite3.Connection, table: str, host_id: int, start: float) -> list[tuple[float, float]]:
    """The stretches [from, to) from `start` on that the buckets of `table` (agg_1m ...) with the host's samples
    cover without a hole, in order. SQLite finds the edges (buckets whose neighbour is missing, one primary-key
    probe each): only they come back, not a row per bucket."""
    width = AGG_TABLES[_agg_table(table)]
    before = f"NOT EXISTS (SELECT 1 FROM {table} p WHERE p.host_id = a.host_id AND p.bucket = a.bucket - {width})"
    after = f"NOT EXISTS (SELECT 1 FROM {table} n WHERE n.host_id = a.host_id AND n.bucket = a.bucket + {width})"
    rows = conn.execute(f"SELECT bucket, starts, ends FROM (SELECT DISTINCT bucket, {before} OR bucket < ?2 + {width} "
                        f"AS starts, {after} AS ends FROM {table} a WHERE host_id = ?1 AND bucket >= ?2) "
                        "WHERE starts OR ends ORDER BY bucket", (host_id, int(start)))
    runs = []
    first = 0.0
    for bucket, starts, ends in rows:
        if starts:
            first = bucket
        if ends:
            runs.append((float(first), float(bucket + width)))
    return runs
