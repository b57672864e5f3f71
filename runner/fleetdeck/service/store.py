"""SQLite (WAL) store: runs, their events, per-instance leases, idempotency keys, webhook deliveries and
an append-only audit trail. One connection guarded by a lock: writes are small and serialised anyway."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE NOT NULL,
  action TEXT NOT NULL, target TEXT NOT NULL, params TEXT NOT NULL, check_mode INTEGER NOT NULL,
  instances TEXT NOT NULL, operator TEXT NOT NULL, source TEXT NOT NULL,
  status TEXT NOT NULL, rc INTEGER, reason TEXT, hosts TEXT NOT NULL DEFAULT '{}',
  created REAL NOT NULL, started REAL, finished REAL);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS events (
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, host TEXT, task TEXT,
  created TEXT, stdout TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS leases (instance TEXT PRIMARY KEY, run_id TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
  token TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL, run_id TEXT NOT NULL,
  created REAL NOT NULL, PRIMARY KEY (token, key));
CREATE TABLE IF NOT EXISTS hook_deliveries (delivery TEXT PRIMARY KEY, received REAL NOT NULL, run_id TEXT);
CREATE TABLE IF NOT EXISTS callbacks (
  id TEXT PRIMARY KEY, run_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT, created REAL NOT NULL,
  updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, actor TEXT NOT NULL, what TEXT NOT NULL,
  run_id TEXT, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
"""
RUN_FILTERS = ("action", "status", "target")
ACTIVE = ("queued", "waiting", "running")
FINISHED = ("successful", "failed", "canceled", "timeout", "interrupted", "error")
RUN_COLUMNS = (
    "id, action, target, params, check_mode, instances, operator, source, status, rc, reason, hosts, "
    "created, started, finished, seq, node"
)


# SQLite result codes that mean the store's files cannot be written now (disk full, I/O error, read-only).
UNWRITABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}


class StoreUnavailable(Exception):
    """The store cannot be written (or opened); `reason` says why, e.g. `database or disk is full`."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"store {path}: {reason}")
        self.path, self.reason = path, reason


class LeaseConflict(Exception):
    def __init__(self, instance: str, holder: str):
        super().__init__(f"instance {instance} is leased by run {holder}")
        self.instance, self.holder = instance, holder


class IdempotencyConflict(Exception):
    def __init__(self, run_id: str):
        super().__init__(f"idempotency key already used for run {run_id}")
        self.run_id = run_id


def _run_row(row: tuple) -> dict:
    run = dict(zip([c.strip() for c in RUN_COLUMNS.split(",")], row, strict=True))
    run["params"], run["instances"], run["hosts"] = (
        json.loads(run[k]) for k in ("params", "instances", "hosts")
    )
    run["check"] = bool(run.pop("check_mode"))
    return run


def _check_dir(directory: Path) -> None:
    """The runs' data dirs live beside the database: the directory itself must take new files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except FileExistsError:
        raise StoreUnavailable(directory, "not a directory") from None
    except OSError as exc:
        raise StoreUnavailable(directory, f"cannot create files: {exc.strerror}") from None


class Store:
    def __init__(self, path: Path):
        """Open (or create) the store and prove it writable; StoreUnavailable names the path and the reason."""
        self.path = path
        self._lock = threading.RLock()
        _check_dir(path.parent)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            if "node" not in {c[1] for c in self._db.execute("PRAGMA table_info(runs)")}:  # rnod: move to a migration
                self._db.execute("ALTER TABLE runs ADD COLUMN node TEXT")  # the run's execution node (nodes.py)
            self._db.execute("PRAGMA user_version = 1")  # a write: a read-only store fails here, not later
            path.chmod(0o600)
        except sqlite3.Error as exc:
            raise StoreUnavailable(path, str(exc)) from None
        except OSError as exc:
            raise StoreUnavailable(path, exc.strerror or str(exc)) from None

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

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self, run: dict, take_leases: bool, idempotency: tuple[str, str, str] | None
    ) -> tuple[str, bool]:
        """Insert a run, with its leases (all or none) and its idempotency key, in one transaction.

        `idempotency` is (operator, key, request digest). A key seen before gives back its run,
        (run id, False), when the digest matches, and raises IdempotencyConflict when not. It is read in
        the same transaction that writes it, so concurrent requests with one key make one run.
        """

        def insert(db):
            if idempotency:
                row = db.execute(
                    "SELECT body_sha256, run_id FROM idempotency WHERE token = ? AND key = ?", idempotency[:2]
                ).fetchone()
                if row and row[0] != idempotency[2]:
                    raise IdempotencyConflict(row[1])
                if row:
                    return row[1], False
            if take_leases:
                self._acquire(db, run["id"], run["instances"])
            db.execute(
                "INSERT INTO runs (id, action, target, params, check_mode, instances, operator, source, "
                "status, created, node) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run["id"],
                    run["action"],
                    run["target"],
                    json.dumps(run["params"]),
                    int(run["check"]),
                    json.dumps(run["instances"]),
                    run["operator"],
                    run["source"],
                    run["status"],
                    run["created"],
                    run.get("node"),
                ),
            )
            if idempotency:
                db.execute(
                    "INSERT INTO idempotency VALUES (?,?,?,?,?)", (*idempotency, run["id"], time.time())
                )
            self._audit(
                db,
                run["operator"],
                "run.created",
                run["id"],
                {k: run[k] for k in ("action", "target", "params", "check", "source")},
            )
            return run["id"], True

        return self._tx(insert)

    def get_run(self, run_id: str) -> dict | None:
        rows = self._query(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))  # noqa: S608 - constant
        return _run_row(rows[0]) if rows else None

    def list_runs(self, filters: dict[str, str], limit: int, before: int | None) -> list[dict]:
        where, args = [], []
        for column, value in filters.items():
            if column not in RUN_FILTERS:
                raise ValueError(f"cannot filter runs by {column}")
            where.append(f"{column} = ?")
            args.append(value)
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        # Columns are checked against RUN_FILTERS, values are bound.
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {RUN_COLUMNS} FROM runs {condition} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        return [_run_row(r) for r in self._query(sql, (*args, limit))]

    def instance_runs(self, instance: str, limit: int, active: bool = False) -> list[dict]:
        """Newest first, the runs whose instances include `instance` (instance names never hold quotes)."""
        statuses = ACTIVE if active else (*ACTIVE, *FINISHED)
        marks = ",".join("?" * len(statuses))
        sql = (f"SELECT {RUN_COLUMNS} FROM runs WHERE instances LIKE ? AND status IN ({marks}) "  # noqa: S608
               "ORDER BY seq DESC LIMIT ?")
        return [_run_row(r) for r in self._query(sql, (f'%"{instance}"%', *statuses, limit))]

    def last_fact(self, instance: str, action: str, fact: str) -> tuple[dict, object] | None:
        """The newest finished run of `action` over `instance` and the value a task of it set as the fact `fact`
        on the instance (None: no task did, e.g. the instance was unreachable); None without such a run."""
        marks = ",".join("?" * len(FINISHED))
        sql = (f"SELECT {RUN_COLUMNS} FROM runs WHERE action = ? AND instances LIKE ? "  # noqa: S608
               f"AND status IN ({marks}) ORDER BY seq DESC LIMIT 1")
        rows = self._query(sql, (action, f'%"{instance}"%', *FINISHED))
        if not rows:
            return None
        run = _run_row(rows[0])
        events = self._query("SELECT data FROM events WHERE run_id = ? AND host = ? AND type = 'runner_on_ok' "
                             "AND data LIKE ? ORDER BY seq DESC LIMIT 1", (run["id"], instance, f'%"{fact}"%'))
        facts = json.loads(events[0][0]).get("res", {}).get("ansible_facts", {}) if events else {}
        return run, facts.get(fact)

    def idempotent_run(self, token: str, key: str) -> tuple[str, str] | None:
        """(request digest, run id) recorded for this token's idempotency key, if any."""
        rows = self._query("SELECT body_sha256, run_id FROM idempotency WHERE token = ? AND key = ?", (token, key))
        return rows[0] if rows else None

    def update_run(self, run_id: str, **fields) -> None:
        if "hosts" in fields:
            fields["hosts"] = json.dumps(fields["hosts"])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        # Field names come from the executor's code, never from a request.
        self._write(f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id))  # noqa: S608

    def finish_run(self, run_id: str, status: str, rc: int | None, reason: str | None) -> None:
        """Final status and lease release together, so a finished run never holds an instance."""

        def finish(db):
            db.execute(
                "UPDATE runs SET status = ?, rc = ?, reason = ?, finished = ? WHERE id = ?",
                (status, rc, reason, time.time(), run_id),
            )
            db.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
            self._audit(db, "runner", "run.finished", run_id, {"status": status, "rc": rc, "reason": reason})

        self._tx(finish)

    def recover(self) -> list[str]:
        """Runs a crash left active become `interrupted`; every lease is released (none can be live)."""

        def recover(db):
            ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE status IN (?,?,?)", ACTIVE)]
            for run_id in ids:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', reason = 'runner restarted', finished = ? "
                    "WHERE id = ?",
                    (time.time(), run_id),
                )
                self._audit(db, "runner", "run.interrupted", run_id, {"reason": "runner restarted"})
            db.execute("DELETE FROM leases")
            return ids

        return self._tx(recover)

    # -- leases --------------------------------------------------------------------------------

    @staticmethod
    def _acquire(db, run_id: str, instances: list[str]) -> None:
        for instance in instances:
            row = db.execute("SELECT run_id FROM leases WHERE instance = ?", (instance,)).fetchone()
            if row:
                raise LeaseConflict(instance, row[0])
        db.executemany("INSERT INTO leases VALUES (?,?,?)", [(i, run_id, time.time()) for i in instances])

    def try_acquire(self, run_id: str, instances: list[str]) -> LeaseConflict | None:
        try:
            self._tx(lambda db: self._acquire(db, run_id, instances))
        except LeaseConflict as conflict:
            return conflict
        return None

    def leases(self) -> dict[str, str]:
        return dict(self._query("SELECT instance, run_id FROM leases"))

    # -- events --------------------------------------------------------------------------------

    def add_events(self, run_id: str, events: list[dict]) -> None:
        self._write(
            "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    e["seq"],
                    e["type"],
                    e.get("host"),
                    e.get("task"),
                    e.get("created"),
                    e["stdout"],
                    json.dumps(e["data"]),
                )
                for e in events
            ],
            many=True,
        )

    def events(self, run_id: str, after: int, limit: int) -> list[dict]:
        rows = self._query(
            "SELECT seq, type, host, task, created, stdout, data FROM events "
            "WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, after, limit),
        )
        return [
            {
                "seq": r[0],
                "type": r[1],
                "host": r[2],
                "task": r[3],
                "created": r[4],
                "stdout": r[5],
                "data": json.loads(r[6]),
            }
            for r in rows
        ]

    # -- webhooks ------------------------------------------------------------------------------

    def record_hook_delivery(self, delivery: str, keep_seconds: float) -> bool:
        """False when this delivery id was seen before (a replay). Forgets older ids."""

        def record(db):
            db.execute("DELETE FROM hook_deliveries WHERE received < ?", (time.time() - keep_seconds,))
            if db.execute("SELECT 1 FROM hook_deliveries WHERE delivery = ?", (delivery,)).fetchone():
                return False
            db.execute("INSERT INTO hook_deliveries VALUES (?,?,NULL)", (delivery, time.time()))
            return True

        return self._tx(record)

    def link_hook_delivery(self, delivery: str, run_id: str) -> None:
        self._write("UPDATE hook_deliveries SET run_id = ? WHERE delivery = ?", (run_id, delivery))

    def add_callback(self, callback_id: str, run_id: str, url: str, body: str) -> None:
        now = time.time()
        self._write(
            "INSERT INTO callbacks (id, run_id, url, body, state, created, updated) VALUES (?,?,?,?,'pending',?,?)",
            (callback_id, run_id, url, body, now, now),
        )

    def update_callback(
        self, callback_id: str, state: str, attempts: int, status: int | None, error: str | None
    ) -> None:
        self._write(
            "UPDATE callbacks SET state = ?, attempts = ?, last_status = ?, last_error = ?, updated = ? WHERE id = ?",
            (state, attempts, status, error, time.time(), callback_id),
        )

    def callbacks(self, state: str | None = None, run_id: str | None = None) -> list[dict]:
        rows = self._query(
            "SELECT id, run_id, url, body, state, attempts, last_status, last_error FROM callbacks "
            "WHERE (? IS NULL OR state = ?) AND (? IS NULL OR run_id = ?) ORDER BY created",
            (state, state, run_id, run_id),
        )
        keys = ("id", "run_id", "url", "body", "state", "attempts", "last_status", "last_error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- audit ---------------------------------------------------------------------------------

    @staticmethod
    def _audit(db, actor: str, what: str, run_id: str | None, detail: dict) -> None:
        db.execute(
            "INSERT INTO audit (time, actor, what, run_id, detail) VALUES (?,?,?,?,?)",
            (time.time(), actor, what, run_id, json.dumps(detail)),
        )

    def audit(self, actor: str, what: str, run_id: str | None, detail: dict) -> None:
        with self._lock, self._writing():
            self._audit(self._db, actor, what, run_id, detail)

    def audit_about(self, what_prefix: str, subject: str, limit: int) -> list[dict]:
        """Newest first, audit lines `what_prefix*` whose detail names `subject` as its instance."""
        rows = self._query(
            "SELECT time, actor, what, run_id, detail FROM audit WHERE what LIKE ? AND detail LIKE ? "
            "ORDER BY seq DESC LIMIT ?",
            (f"{what_prefix}%", f'%"instance": "{subject}"%', limit),
        )
        return [{"time": r[0], "actor": r[1], "what": r[2], "run_id": r[3], "detail": json.loads(r[4])}
                for r in rows]

    def audit_trail(self, run_id: str) -> list[dict]:
        rows = self._query(
            "SELECT time, actor, what, detail FROM audit WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [{"time": r[0], "actor": r[1], "what": r[2], "detail": json.loads(r[3])} for r in rows]

    def ping(self) -> None:
        self._query("SELECT 1")
