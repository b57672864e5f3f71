"""The store on SQLite (WAL), the default: one file beside the runs' data dirs, one runner process. One
connection guarded by a lock: writes are small and serialised anyway. The schema version is the
database's user_version."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from .store import Store, StoreUnavailable, check_dir

# SQLite result codes that mean the store's files cannot be written now (disk full, I/O error, read-only).
UNWRITABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}


class SqliteStore(Store):
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    ID_COLUMN = "INTEGER PRIMARY KEY AUTOINCREMENT"
    AUDIT_TRIGGERS = (
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    )

    def __init__(self, path: Path):
        """Open (or create) the store, migrate it and prove it writable; StoreUnavailable names the path and
        the reason."""
        self.path = self.where = path
        self._lock = threading.RLock()
        check_dir(path.parent)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._tx(self._migrate)  # always a write: a read-only store fails here, not later
            path.chmod(0o600)
        except sqlite3.Error as exc:
            raise StoreUnavailable(path, str(exc)) from None
        except OSError as exc:
            raise StoreUnavailable(path, exc.strerror or str(exc)) from None

    @staticmethod
    def _schema_version(db) -> int:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1 and "node" in {c[1] for c in db.execute("PRAGMA table_info(runs)")}:
            return 2  # the runner before migrations added the execution node's column at version 1
        return version

    @staticmethod
    def _set_schema_version(db, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _writing(self):
        """Turn 'cannot write now' SQLite errors into StoreUnavailable (callers answer 503 or retry)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in UNWRITABLE:  # extended codes keep the primary's
                raise StoreUnavailable(self.path, str(exc)) from exc
            raise

    def _tx(self, fn):
        with self._lock, self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL has rolled it back already
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return result

    def _write(self, sql: str, args=(), many: bool = False) -> None:
        with self._lock, self._writing():
            (self._db.executemany if many else self._db.execute)(sql, args)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()
