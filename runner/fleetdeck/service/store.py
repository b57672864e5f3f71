"""The store: runs, their events, per-instance leases, idempotency keys, webhook deliveries, hub callbacks,
the replicas' heartbeats and an append-only audit trail. Its SQL and logic are written once here; a
dialect (store_sqlite.SqliteStore, store_postgres.PostgresStore) connects, runs transactions, maps its
driver's "cannot write now" errors to StoreUnavailable and supplies the few statements that differ.
`open_store` picks the dialect from the settings."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

RUN_FILTERS = ("action", "status", "target")
ACTIVE = ("queued", "waiting", "running")
FINISHED = ("successful", "failed", "canceled", "timeout", "interrupted", "error")
RUN_COLUMNS = (
    "id, action, target, params, check_mode, instances, operator, source, status, rc, reason, hosts, "
    "created, started, finished, seq, node, replica"
)
_ACTIVE_IN = "('queued', 'waiting', 'running')"
_UNSTARTED_IN = "('queued', 'waiting')"
CLAIM_BATCH = 100  # queued runs looked at per claim


class StoreUnavailable(Exception):
    """The store cannot be written (or opened); `where` names it (a path, or a database without its
    password), `reason` says why, e.g. `database or disk is full`."""

    def __init__(self, where, reason: str):
        super().__init__(f"store {where}: {reason}")
        self.path, self.reason = where, reason


class LeaseConflict(Exception):
    def __init__(self, instance: str, holder: str):
        super().__init__(f"instance {instance} is leased by run {holder}")
        self.instance, self.holder = instance, holder


class IdempotencyConflict(Exception):
    def __init__(self, run_id: str):
        super().__init__(f"idempotency key already used for run {run_id}")
        self.run_id = run_id


def open_store(settings) -> Store:
    """PostgreSQL when FLEETDECK_DATABASE_URL is set, else SQLite at data_dir/runner.db."""
    if settings.database_url:
        from .store_postgres import PostgresStore

        check_dir(settings.data_dir)  # the runs' private data dirs live there
        return PostgresStore(settings.database_url)
    from .store_sqlite import SqliteStore

    return SqliteStore(settings.data_dir / "runner.db")


def check_dir(directory: Path) -> None:
    """The runs' private data dirs live in the data dir (beside an SQLite store): it must take new files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except FileExistsError:
        raise StoreUnavailable(directory, "not a directory") from None
    except OSError as exc:
        raise StoreUnavailable(directory, f"cannot create files: {exc.strerror}") from None


def _run_row(row: tuple) -> dict:
    run = dict(zip([c.strip() for c in RUN_COLUMNS.split(",")], row, strict=True))
    run["params"], run["instances"], run["hosts"] = (
        json.loads(run[k]) for k in ("params", "instances", "hosts")
    )
    run["check"] = bool(run.pop("check_mode"))
    return run


class Store:
    """What every dialect provides: `_tx(fn)` runs fn(db) in one transaction (db.execute(sql, args) gives a
    cursor, db.executemany(sql, rows)); `_write` and `_query` one statement; `close`. SQL uses `?`."""

    single_replica = True  # SQLite: one runner process owns the store
    SKIP_LOCKED = ""  # appended to SELECTs whose rows a transaction claims
    NOW = ""  # SQL: the database's clock, seconds since the epoch (heartbeats do not trust peers' clocks)
    ID_COLUMN = ""  # an autoincrementing integer primary key
    AUDIT_TRIGGERS: tuple[str, ...] = ()  # statements that make the audit table append-only

    def _tx(self, fn):
        raise NotImplementedError

    def _write(self, sql: str, args=(), many: bool = False) -> None:
        raise NotImplementedError

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- schema --------------------------------------------------------------------------------

    def migrations(self) -> list[list[str]]:
        """Version n's statements at index n - 1. Append only: a released version never changes."""
        return [
            [  # 1: the single-runner store
                f"CREATE TABLE runs (seq {self.ID_COLUMN}, id TEXT UNIQUE NOT NULL, action TEXT NOT NULL, "
                "target TEXT NOT NULL, params TEXT NOT NULL, check_mode INTEGER NOT NULL, instances TEXT NOT NULL, "
                "operator TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, rc INTEGER, reason TEXT, "
                "hosts TEXT NOT NULL DEFAULT '{}', created DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION, "
                "finished DOUBLE PRECISION)",
                "CREATE INDEX runs_status ON runs(status)",
                "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, host TEXT, "
                "task TEXT, created TEXT, stdout TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq))",
                "CREATE TABLE leases (instance TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
                "since DOUBLE PRECISION NOT NULL)",
                "CREATE TABLE idempotency (token TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL, "
                "run_id TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, PRIMARY KEY (token, key))",
                "CREATE TABLE hook_deliveries (delivery TEXT PRIMARY KEY, received DOUBLE PRECISION NOT NULL, "
                "run_id TEXT)",
                "CREATE TABLE callbacks (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, url TEXT NOT NULL, "
                "body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER, "
                "last_error TEXT, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)",
                f"CREATE TABLE audit (seq {self.ID_COLUMN}, time DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, "
                "what TEXT NOT NULL, run_id TEXT, detail TEXT NOT NULL)",
                *self.AUDIT_TRIGGERS,
            ],
            [  # 2: the run's execution node (nodes.py)
                "ALTER TABLE runs ADD COLUMN node TEXT",
            ],
            [  # 3: replicas: who runs a run, cancel across replicas, heartbeats
                "ALTER TABLE runs ADD COLUMN replica TEXT",
                "ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
                "CREATE TABLE replicas (id TEXT PRIMARY KEY, heartbeat DOUBLE PRECISION NOT NULL)",
            ],
        ]

    def _migrate(self, db) -> None:
        """Bring the schema to the newest version, in the caller's transaction (which holds the dialect's
        migration lock); also a write that proves the store writable."""
        steps = self.migrations()
        current = self._schema_version(db)
        if current > len(steps):
            raise StoreUnavailable(self.where, f"schema version {current} is newer than this runner's {len(steps)}")
        for version in range(current + 1, len(steps) + 1):
            for statement in steps[version - 1]:
                db.execute(statement)
        self._set_schema_version(db, len(steps))

    def schema_version(self) -> int:
        return self._tx(self._schema_version)

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
        rows = self._query(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
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
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {RUN_COLUMNS} FROM runs {condition} ORDER BY seq DESC LIMIT ?"
        return [_run_row(r) for r in self._query(sql, (*args, limit))]

    def instance_runs(self, instance: str, limit: int, active: bool = False) -> list[dict]:
        """Newest first, the runs whose instances include `instance` (instance names never hold quotes)."""
        statuses = ACTIVE if active else (*ACTIVE, *FINISHED)
        marks = ",".join("?" * len(statuses))
        sql = (f"SELECT {RUN_COLUMNS} FROM runs WHERE instances LIKE ? AND status IN ({marks}) "
               "ORDER BY seq DESC LIMIT ?")
        return [_run_row(r) for r in self._query(sql, (f'%"{instance}"%', *statuses, limit))]

    def last_fact(self, instance: str, action: str, fact: str) -> tuple[dict, object] | None:
        """The newest finished run of `action` over `instance` and the value a task of it set as the fact `fact`
        on the instance (None: no task did, e.g. the instance was unreachable); None without such a run."""
        marks = ",".join("?" * len(FINISHED))
        sql = (f"SELECT {RUN_COLUMNS} FROM runs WHERE action = ? AND instances LIKE ? "
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
        return tuple(rows[0]) if rows else None

    def update_run(self, run_id: str, **fields) -> None:
        if "hosts" in fields:
            fields["hosts"] = json.dumps(fields["hosts"])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        # Field names come from the executor's code, never from a request.
        self._write(f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id))

    def finish_run(self, run_id: str, status: str, rc: int | None, reason: str | None) -> None:
        """Final status and lease release together, so a finished run never holds an instance. A run a peer
        has already ended (its replica was presumed dead) keeps that end."""

        def finish(db):
            ended = db.execute(
                f"UPDATE runs SET status = ?, rc = ?, reason = ?, finished = ? WHERE id = ? AND status IN {_ACTIVE_IN}",
                (status, rc, reason, time.time(), run_id),
            ).rowcount
            db.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
            if ended:
                self._audit(db, "runner", "run.finished", run_id, {"status": status, "rc": rc, "reason": reason})

        self._tx(finish)

    # -- replicas ------------------------------------------------------------------------------

    def recover(self, replica: str) -> list[str]:
        """At start: the runs this replica had taken before it stopped become `interrupted` and their leases
        are freed. A single-replica store (SQLite) has no other owner: every active run, every lease."""

        def recover(db):
            mine = "" if self.single_replica else " AND replica = ?"
            args = () if self.single_replica else (replica,)
            ids = self._interrupt(db, mine, args, "runner restarted", {})
            if self.single_replica:
                db.execute("DELETE FROM leases")
            return ids

        return self._tx(recover)

    def heartbeat(self, replica: str) -> None:
        self._write(
            f"INSERT INTO replicas (id, heartbeat) VALUES (?, {self.NOW}) "
            f"ON CONFLICT (id) DO UPDATE SET heartbeat = {self.NOW}",
            (replica,),
        )

    def leave(self, replica: str) -> None:
        """A replica that stops cleanly (its runs ended) is not waited for by its peers."""
        self._write("DELETE FROM replicas WHERE id = ?", (replica,))

    def live_peers(self, replica: str, timeout: float) -> int:
        return self._query(
            f"SELECT COUNT(*) FROM replicas WHERE id <> ? AND heartbeat >= {self.NOW} - ?", (replica, timeout)
        )[0][0]

    def reap_dead(self, replica: str, timeout: float) -> list[str]:
        """Runs taken by a replica whose heartbeat is older than `timeout` (or gone) become `interrupted`, the
        reason naming it, and their leases are freed; its heartbeat row goes. Peers reaping at once skip
        each other's rows."""

        def reap(db):
            rows = db.execute(
                f"SELECT id, replica FROM runs WHERE status IN {_ACTIVE_IN} AND replica IS NOT NULL "
                f"AND replica <> ? AND replica NOT IN (SELECT id FROM replicas WHERE heartbeat >= {self.NOW} - ?)"
                f"{self.SKIP_LOCKED}",
                (replica, timeout),
            ).fetchall()
            ids = []
            for gone in sorted({r[1] for r in rows}):
                reason = f"replica {gone} presumed dead: no heartbeat for {timeout:g}s"
                theirs = self._interrupt(db, " AND replica = ?", (gone,), reason, {"replica": gone, "by": replica})
                db.execute("DELETE FROM replicas WHERE id = ?", (gone,))
                self._audit(db, replica, "replica.dead", None, {"replica": gone, "runs": theirs})
                ids += theirs
            db.execute(f"DELETE FROM replicas WHERE heartbeat < {self.NOW} - ?", (timeout,))
            return ids

        return self._tx(reap)

    def _interrupt(self, db, condition: str, args: tuple, reason: str, detail: dict) -> list[str]:
        """Active runs matching `condition` end `interrupted` with `reason`; their leases go."""
        ids = [r[0] for r in db.execute(
            f"SELECT id FROM runs WHERE status IN {_ACTIVE_IN}{condition}", args
        ).fetchall()]
        for run_id in ids:
            db.execute(
                "UPDATE runs SET status = 'interrupted', reason = ?, finished = ? WHERE id = ?",
                (reason, time.time(), run_id),
            )
            db.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
            self._audit(db, "runner", "run.interrupted", run_id, {"reason": reason, **detail})
        return ids

    # -- the queue -----------------------------------------------------------------------------

    def claim_run(self, replica: str, actions: Collection[str]) -> dict | None:
        """The oldest queued run no replica has taken, or waiting run whose instances are all free now
        (their leases taken with it), becomes `replica`'s; None when there is none. Only runs of `actions`
        (the replica's catalog): a peer with another catalog, as in a rolling upgrade of the runner, leaves
        the others to the replicas that know them. Concurrent claims by peers skip each other's candidates."""
        if not actions:
            return None
        known = ", ".join("?" * len(actions))

        def claim(db):
            rows = db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN {_UNSTARTED_IN} AND replica IS NULL "
                f"AND action IN ({known}) ORDER BY seq LIMIT {CLAIM_BATCH}{self.SKIP_LOCKED}",
                tuple(actions),
            ).fetchall()
            for row in rows:
                run = _run_row(row)
                if run["status"] == "waiting":
                    db.execute("SAVEPOINT waiting")
                    try:
                        self._acquire(db, run["id"], run["instances"])
                    except LeaseConflict:
                        db.execute("ROLLBACK TO SAVEPOINT waiting")
                        continue
                    run["status"] = "queued"
                db.execute("UPDATE runs SET replica = ?, status = ? WHERE id = ?", (replica, run["status"], run["id"]))
                run["replica"] = replica
                return run
            return None

        return self._tx(claim)

    def take_unstarted(self, run_id: str, replica: str) -> bool:
        """A queued or waiting run no replica has taken becomes `replica`'s (to end it before it starts)."""
        return self._tx(lambda db: db.execute(
            f"UPDATE runs SET replica = ? WHERE id = ? AND replica IS NULL AND status IN {_UNSTARTED_IN}",
            (replica, run_id),
        ).rowcount == 1)

    def unclaimed(self) -> list[str]:
        return [r[0] for r in self._query(
            f"SELECT id FROM runs WHERE status IN {_UNSTARTED_IN} AND replica IS NULL ORDER BY seq"
        )]

    def request_cancel(self, run_id: str) -> bool:
        """Flag an active run for its replica to cancel; False when it is not active."""
        return self._tx(lambda db: db.execute(
            f"UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN {_ACTIVE_IN}", (run_id,)
        ).rowcount == 1)

    def stop_requests(self, run_ids: list[str]) -> dict[str, str]:
        """Of these runs: those to cancel (`canceled`) and those a peer has ended meanwhile (`interrupted`)."""
        if not run_ids:
            return {}
        rows = self._query(
            f"SELECT id, status FROM runs WHERE id IN ({','.join('?' * len(run_ids))}) "
            f"AND (cancel_requested = 1 OR status NOT IN {_ACTIVE_IN})",
            tuple(run_ids),
        )
        return {r[0]: "canceled" if r[1] in ACTIVE else "interrupted" for r in rows}

    # -- leases --------------------------------------------------------------------------------

    @staticmethod
    def _acquire(db, run_id: str, instances: list[str]) -> None:
        """All or none, in the caller's transaction; in a fixed order, so concurrent acquisitions cannot
        deadlock. The primary key decides between concurrent transactions."""
        now = time.time()
        for instance in sorted(instances):
            taken = db.execute(
                "INSERT INTO leases VALUES (?,?,?) ON CONFLICT (instance) DO NOTHING", (instance, run_id, now)
            ).rowcount
            if not taken:
                row = db.execute("SELECT run_id FROM leases WHERE instance = ?", (instance,)).fetchone()
                raise LeaseConflict(instance, row[0] if row else "another run")

    def leases(self) -> dict[str, str]:
        return dict(self._query("SELECT instance, run_id FROM leases"))

    # -- events --------------------------------------------------------------------------------

    def add_events(self, run_id: str, events: list[dict]) -> None:
        self._write(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
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
            return db.execute(
                "INSERT INTO hook_deliveries VALUES (?,?,NULL) ON CONFLICT DO NOTHING", (delivery, time.time())
            ).rowcount == 1

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
        where = [(c, v) for c, v in (("state", state), ("run_id", run_id)) if v is not None]
        condition = f"WHERE {' AND '.join(f'{c} = ?' for c, _ in where)}" if where else ""
        rows = self._query(
            "SELECT id, run_id, url, body, state, attempts, last_status, last_error FROM callbacks "
            f"{condition} ORDER BY created",
            tuple(v for _, v in where),
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
        self._tx(lambda db: self._audit(db, actor, what, run_id, detail))

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
