"""The store on both dialects (no service, no fleet): schema versions and their migration (a v1 SQLite
store upgraded in place, replicas migrating one PostgreSQL database at once), the append-only audit,
claims of queued and waiting runs; PostgreSQL's lost connection as 503 and its password never shown."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import pytest
from fleetdeck.service import __main__ as service_main
from fleetdeck.service.config import ConfigError
from fleetdeck.service.store_postgres import PostgresStore
from fleetdeck.service.store_sqlite import SqliteStore

from tests.runner.service import app_for, in_process, make_local_env, wait_until

# The schema of version 1 as the runner before replicas created it: such stores must upgrade in place.
V1_SCHEMA = """
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
PRAGMA user_version = 1;
"""


@pytest.fixture
def store(runner_store, tmp_path):
    url = runner_store.env().get("FLEETDECK_DATABASE_URL")
    opened = PostgresStore(url) if url else SqliteStore(tmp_path / "runner.db")
    yield opened
    opened.close()


def a_run(instances: list[str], status: str = "queued") -> dict:
    return {"id": str(uuid.uuid4()), "action": "sleep", "target": instances[0], "params": {}, "check": False,
            "instances": instances, "operator": "admin", "source": "api", "status": status, "created": time.time()}


def test_a_new_store_is_at_the_newest_schema_and_its_audit_is_append_only(store):
    assert store.schema_version() == len(store.migrations()) == 3
    store.audit("admin", "test.line", None, {"n": 1})
    for change in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="audit is append-only"):
            store._tx(lambda db, sql=change: db.execute(sql))
    assert store._query("SELECT actor FROM audit") == [("admin",)]


def test_claims_take_queued_runs_in_order_and_waiting_ones_with_all_their_leases(store):
    holder = a_run(["i1"])
    store.create_run(holder, take_leases=True, idempotency=None)
    waiting = a_run(["i2", "i1"], "waiting")
    store.create_run(waiting, take_leases=False, idempotency=None)
    queued = a_run(["i3"])
    store.create_run(queued, take_leases=True, idempotency=None)

    assert store.claim_run("r1", {"sleep"})["id"] == holder["id"]
    assert store.claim_run("r1", {"sleep"})["id"] == queued["id"]  # the waiting run's i1 is leased: it is passed over
    assert store.claim_run("r2", {"sleep"}) is None
    assert store.leases() == {"i1": holder["id"], "i3": queued["id"]}, "none of the waiting run's leases"
    store.finish_run(holder["id"], "successful", 0, None)
    claimed = store.claim_run("r2", {"sleep"})
    assert (claimed["id"], claimed["status"], claimed["replica"]) == (waiting["id"], "queued", "r2")
    assert store.leases() == {"i1": waiting["id"], "i2": waiting["id"], "i3": queued["id"]}
    assert not store.take_unstarted(waiting["id"], "r1"), "a claimed run is its replica's"


def test_a_replica_claims_only_runs_of_the_actions_it_knows(store):
    """A peer with an older catalog (a rolling upgrade of the runner) leaves a new action's run queued."""
    newer = {**a_run(["i1"]), "action": "ping"}
    store.create_run(newer, take_leases=True, idempotency=None)
    older = a_run(["i2"])
    store.create_run(older, take_leases=True, idempotency=None)
    assert store.claim_run("old", {"sleep"})["id"] == older["id"]
    assert store.claim_run("old", {"sleep"}) is None
    assert store.claim_run("old", set()) is None
    assert store.claim_run("new", {"sleep", "ping"})["id"] == newer["id"]


@pytest.mark.parametrize("node_column", [False, True], ids=["v1", "v1-with-node"])
def test_a_v1_sqlite_store_is_upgraded_in_place(tmp_path, node_column):
    """Also the store of the runner between execution nodes and migrations: version 1 with runs.node."""
    path = tmp_path / "runner.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
        if node_column:
            old.execute("ALTER TABLE runs ADD COLUMN node TEXT")
        old.execute("INSERT INTO runs (id, action, target, params, check_mode, instances, operator, source, "
                    "status, created) VALUES ('old-run', 'ping', 'local-1', '{}', 0, '[\"local-1\"]', 'admin', "
                    "'api', 'running', 1.5)")
        old.execute("INSERT INTO leases VALUES ('local-1', 'old-run', 1.5)")
    old.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == 3
        assert (store.get_run("old-run")["replica"], store.get_run("old-run")["node"]) == (None, None)
        assert store.recover("runner-1") == ["old-run"]
        assert store.get_run("old-run")["status"] == "interrupted" and store.leases() == {}
    finally:
        store.close()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit")


@pytest.mark.stores("postgres")
def test_replicas_starting_together_migrate_one_database_once(runner_store):
    url = runner_store.env()["FLEETDECK_DATABASE_URL"]
    opened, errors = [], []

    def start():
        try:
            opened.append(PostgresStore(url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(opened) == 4, errors
    assert [s.schema_version() for s in opened] == [3] * 4
    assert opened[0]._query("SELECT count(*) FROM schema_version") == [(1,)]
    for store in opened:
        store.close()


@pytest.mark.stores("postgres")
def test_a_lost_database_answers_503_and_never_shows_the_password(runner_store, tmp_path, caplog):
    server = runner_store.server
    env = make_local_env(tmp_path, runner_store)
    url = env.env["FLEETDECK_DATABASE_URL"]
    dbname = url.rsplit("/", 1)[1]
    caplog.set_level("INFO")
    with in_process(env), app_for(env) as app:
        client = app.test_client()
        first = client.post("/v1/runs", json={"action": "ping", "target": "local-1"}, headers=env.auth())
        assert first.status_code == 202, first.get_json()
        server.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        server.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", params=(dbname,))
        try:
            answers = [client.post("/v1/runs", json={"action": "ping", "target": "local-2"}, headers=env.auth()),
                       client.get("/v1/runs", headers=env.auth()), client.get("/metrics", headers=env.auth())]
            for answer in answers:
                assert answer.status_code == 503, answer.get_data(as_text=True)
                error = answer.get_json()["error"]
                assert error["code"] == "store_unavailable" and "retry later" in error["message"], error
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.get_json()["checks"]["store"]["ok"] is False
            bodies = [a.get_data(as_text=True) for a in (*answers, ready)]
        finally:
            server.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        again = client.post("/v1/runs", json={"action": "ping", "target": "local-2"}, headers=env.auth())
        assert again.status_code == 202, again.get_json()
        run_id = again.get_json()["id"]
        wait_until(lambda: client.get(f"/v1/runs/{run_id}", headers=env.auth()).get_json()["status"] == "successful")
    assert f"answered 503: store postgresql://postgres@127.0.0.1:{server.port}/{dbname}: " in caplog.text
    assert server.password not in caplog.text + "".join(bodies)


@pytest.mark.stores("postgres")
def test_refusals_at_start_name_the_database_not_the_password(runner_store, tmp_path, monkeypatch, capsys):
    env = make_local_env(tmp_path, runner_store)
    wrong = env.env["FLEETDECK_DATABASE_URL"].replace(runner_store.server.password, "not-the-password-0123")
    (tmp_path / "url").write_text(wrong + "\n")
    settings = {**env.env, "FLEETDECK_DATABASE_URL": "", "FLEETDECK_DATABASE_URL_FILE": str(tmp_path / "url")}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    assert service_main.main([]) == 2
    refusal = capsys.readouterr().err
    assert "refusing to start: store postgresql://postgres@127.0.0.1" in refusal, refusal
    assert "password authentication failed" in refusal, refusal
    assert "not-the-password-0123" not in refusal

    with pytest.raises(ConfigError) as refused:
        env.settings(FLEETDECK_DATABASE_URL="postgresql://u:pw-0123456789@host/db?no_such_option=1")
    assert "pw-0123456789" not in str(refused.value) and "FLEETDECK_DATABASE_URL" in str(refused.value)
