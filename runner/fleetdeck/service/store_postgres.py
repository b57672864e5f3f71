"""The store on PostgreSQL (FLEETDECK_DATABASE_URL): several runner replicas share one database. One
connection per process guarded by a lock, autocommit outside the store's own transactions; a lost
connection answers StoreUnavailable and is opened again on the next use. The schema version is the
schema_version table; replicas starting together migrate one after the other (an advisory lock)."""

from __future__ import annotations

import contextlib
import threading

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .store import Store, StoreUnavailable

MIGRATION_LOCK = 0x666C6565  # pg_advisory_xact_lock key of the schema migration ("flee")
CONNECT_TIMEOUT = 10


def describe(url: str) -> str:
    """The database a conninfo names, without its password: what errors and logs may show."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (an invalid connection URL)"
    user, host, port, dbname = (info.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port or 5432}/{dbname}"


def _bindable(args) -> tuple:
    """PostgreSQL text cannot hold NUL: it becomes U+FFFD (a run id with one matches no run, as in SQLite;
    a NUL in a playbook's output is stored as the replacement character)."""
    return tuple(a.replace("\0", "\ufffd") if isinstance(a, str) else a for a in args)


class _Db:
    """The sqlite3-like face the common SQL expects: `?` placeholders, execute returns a cursor."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def execute(self, sql: str, args=()):
        return self.conn.execute(sql.replace("?", "%s"), _bindable(args) or None)

    def executemany(self, sql: str, rows):
        cursor = self.conn.cursor()
        cursor.executemany(sql.replace("?", "%s"), [_bindable(row) for row in rows])
        return cursor


class PostgresStore(Store):
    single_replica = False
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    NOW = "extract(epoch from clock_timestamp())::double precision"
    ID_COLUMN = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    AUDIT_TRIGGERS = (
        "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$",
        "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
        "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    )

    def __init__(self, url: str):
        """Connect, migrate and prove the database writable; StoreUnavailable names the database, never the
        password."""
        self._url, self.where = url, describe(url)
        self._password = conninfo_to_dict(url).get("password") or None
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._tx(self._migrate_locked)

    def _migrate_locked(self, db) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        self._migrate(db)

    @staticmethod
    def _schema_version(db) -> int:
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    @staticmethod
    def _set_schema_version(db, version: int) -> None:
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="fleetdeck-runner"
            )
        return self._conn

    @contextlib.contextmanager
    def _using(self):
        """The connection, under the lock; a lost server or connection becomes StoreUnavailable."""
        with self._lock:
            try:
                yield _Db(self._connection())
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn.close()
                raise StoreUnavailable(self.where, self._clean(exc)) from None

    def _clean(self, exc: Exception) -> str:
        """The driver's message (libpq's never holds the password; masked should one ever)."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text

    def _tx(self, fn):
        with self._using() as db, db.conn.transaction():
            return fn(db)

    def _write(self, sql: str, args=(), many: bool = False) -> None:
        with self._using() as db:
            (db.executemany if many else db.execute)(sql, args)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._using() as db:
            return db.execute(sql, args).fetchall()
