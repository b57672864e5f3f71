"""End-to-end tests: the built refapp tarballs against a throwaway PostgreSQL cluster."""

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pg8000.native
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.refapp.build import MTIME, RELEASES, SIGNATURE_NAMESPACE, artifact_name, build, make_signing_key

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SRC = Path(__file__).resolve().parent / "src"
DB_USER = "refapp"
DB_PASSWORD = "db-" + secrets.token_hex(12)
TOKEN = "tok-current-" + secrets.token_hex(8)
OLD_TOKEN = "tok-previous-" + secrets.token_hex(8)
WRONG_TOKEN = "tok-wrong-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL -------------------------------------------------------------------------------


class Postgres:
    def __init__(self, port: int, superuser_password: str):
        self.port = port
        self.superuser_password = superuser_password

    def connect(self, database: str = "postgres", user: str = "postgres") -> pg8000.native.Connection:
        password = self.superuser_password if user == "postgres" else DB_PASSWORD
        return pg8000.native.Connection(
            user, password=password, host="127.0.0.1", port=self.port, database=database
        )

    def query(self, database: str, sql: str) -> list:
        with contextlib.closing(self.connect(database, DB_USER)) as conn:
            return conn.run(sql)


@pytest.fixture(scope="module")
def postgres():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    # pytest's tmp_path lives under a root-only directory; the cluster belongs to `postgres`.
    base = Path(tempfile.mkdtemp(prefix="refapp-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    superuser_password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    if as_postgres:
        shutil.chown(pwfile, "postgres", "postgres")
    data, port = base / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, cwd=base)

    pg(
        str(PG_BIN / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "--encoding=UTF8",
        "--no-sync",
    )
    pg(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "start",
        "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off",
    )
    try:
        server = Postgres(port, superuser_password)
        with contextlib.closing(server.connect()) as conn:
            conn.run(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        yield server
    finally:
        pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base)


@pytest.fixture
def database(postgres) -> str:
    """A fresh, empty database owned by the refapp role."""
    name = "refapp_" + secrets.token_hex(4)
    with contextlib.closing(postgres.connect()) as conn:
        conn.run(f"CREATE DATABASE {name} OWNER {DB_USER}")
    return name


# --- the built artifact -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    """version -> path of the extracted bin/refapp launcher."""
    out = tmp_path_factory.mktemp("dist")
    launchers = {}
    for version, tarball in build(out).items():
        with tarfile.open(tarball) as tar:
            tar.extractall(out / "releases", filter="data")
        launchers[version] = out / "releases" / f"refapp-{version}" / "bin" / "refapp"
    return launchers


@pytest.fixture
def make_env(postgres, tmp_path):
    def make(database: str, **overrides: str) -> dict[str, str]:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        env = {
            "PATH": "/usr/bin:/bin",
            "REFAPP_LISTEN": f"127.0.0.1:{free_port()}",
            "REFAPP_INSTANCE": "acme",
            "REFAPP_DATA_DIR": str(data_dir),
            "REFAPP_DB_HOST": "127.0.0.1",
            "REFAPP_DB_PORT": str(postgres.port),
            "REFAPP_DB_NAME": database,
            "REFAPP_DB_USER": DB_USER,
            "REFAPP_DB_PASSWORD": DB_PASSWORD,
            "REFAPP_API_TOKEN": TOKEN,
            "REFAPP_API_TOKEN_PREVIOUS": "",
            "REFAPP_FEATURES": "search, export",
            "REFAPP_LOG_LEVEL": "info",
        }
        env.update(overrides)
        return env

    return make


def run(launcher: Path, command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(launcher), command], env=env, capture_output=True, text=True, timeout=60)


class Client:
    def __init__(self, env: dict[str, str]):
        self.base = f"http://{env['REFAPP_LISTEN']}"

    def call(self, method: str, path: str, token: str | None = None, body: object = None):
        """Returns (status, content type, parsed JSON or text)."""
        # S310: the URL is always http://127.0.0.1:<port> of the service under test.
        request = urllib.request.Request(self.base + path, method=method)  # noqa: S310
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, data=data, timeout=10) as response:  # noqa: S310
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, raw = error.code, error.headers, error.read()
        content_type = headers.get("Content-Type", "")
        text = raw.decode()
        return status, content_type, json.loads(text) if content_type == "application/json" else text


@contextlib.contextmanager
def serving(launcher: Path, env: dict[str, str], log: Path):
    """Run `refapp serve` until the block ends; the process must then stop cleanly on SIGTERM."""
    with log.open("a") as sink:
        proc = subprocess.Popen([str(launcher), "serve"], env=env, stdout=sink, stderr=sink)
    client = Client(env)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"refapp serve exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                client.call("GET", "/health")
                break
            if time.monotonic() > deadline:
                pytest.fail(f"refapp serve did not answer:\n{log.read_text()}")
            time.sleep(0.05)
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()


# --- tests ------------------------------------------------------------------------------------


def test_build_is_reproducible_and_checksummed(tmp_path):
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert list(first) == list(RELEASES) == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    for version, tarball in first.items():
        data = tarball.read_bytes()
        assert tarball.name == artifact_name(version)
        assert tarball.name.startswith(f"refapp-{version}-linux-") and tarball.name.endswith(".tar.gz")
        assert data == second[version].read_bytes()
        checksum = Path(f"{tarball}.sha256").read_text()
        assert checksum == f"{hashlib.sha256(data).hexdigest()}  {tarball.name}\n"

        with tarfile.open(tarball) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            assert names == sorted(names)
            assert all(m.uid == 0 and m.gid == 0 and m.mtime == MTIME for m in members)
            assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
            top = f"refapp-{version}"
            launcher = tar.getmember(f"{top}/bin/refapp")
            assert launcher.mode == 0o755
            assert tar.extractfile(launcher).read().startswith(b"#!/usr/bin/python3\n")
            assert tar.extractfile(f"{top}/VERSION").read() == f"{version}\n".encode()
            for module in ("refapp/cli.py", "pg8000/native.py", "scramp/core.py", "asn1crypto/core.py"):
                assert f"{top}/lib/{module}" in names
            migrations = sorted(
                n.rsplit("/", 1)[1] for n in names if "/migrations/" in n and n.endswith(".sql")
            )
            expected = {"1.0.0": ["0001_create_items.sql"]}.get(
                version, ["0001_create_items.sql", "0002_items_slug.sql"]
            )
            down = ["0002_items_slug.down.sql"] if version == "1.1.0" else []
            assert migrations == sorted(expected + down)
            # Only a release that can undo its migrations ships the down-migration command.
            assert (f"{top}/bin/refapp-migrate-down" in names) == bool(down)


def test_signed_build_carries_a_verifiable_signature_of_each_checksum_file(tmp_path):
    public = make_signing_key(tmp_path / "release-key")
    (tmp_path / "allowed").write_text(f"release {public}\n")
    tarball = build(tmp_path / "dist", ["1.0.0"], sign_key=tmp_path / "release-key")["1.0.0"]
    checksum = Path(f"{tarball}.sha256")
    verify = ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "release",
              "-n", SIGNATURE_NAMESPACE, "-s", f"{checksum}.sig"]
    good = subprocess.run(verify, input=checksum.read_bytes(), capture_output=True)
    assert good.returncode == 0 and b"Good" in good.stdout, good
    assert subprocess.run(verify, input=checksum.read_bytes() + b"\n", capture_output=True).returncode != 0


def test_version_command(releases):
    for version, launcher in releases.items():
        result = subprocess.run([str(launcher), "version"], capture_output=True, text=True, env={})
        assert result.returncode == 0
        assert result.stdout == f"{version}\n"
    from_source = subprocess.run(
        [sys.executable, "-m", "refapp", "version"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
    )
    assert from_source.stdout == "0.0.0+source\n"


def test_missing_db_password_exits_naming_the_variable(releases, make_env, database):
    env = make_env(database)
    del env["REFAPP_DB_PASSWORD"]
    for command in ("serve", "migrate"):
        result = run(releases["1.1.0"], command, env)
        assert result.returncode != 0
        assert "REFAPP_DB_PASSWORD" in result.stderr


def test_serves_health_items_and_files(releases, make_env, database, postgres, tmp_path):
    env = make_env(database)
    migrated = run(releases["1.1.0"], "migrate", env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == ["applied 0001_create_items", "applied 0002_items_slug"]

    with serving(releases["1.1.0"], env, tmp_path / "serve.log") as app:
        status, _, health = app.call("GET", "/health")
        assert status == 200
        assert health["status"] == "ok"
        assert health["version"] == "1.1.0"
        assert health["instance"] == "acme"
        assert health["database"] == "reachable"
        assert health["schema"] == 2
        assert health["features"] == ["search", "export"]

        assert app.call("GET", "/items")[0] == 401
        assert app.call("GET", "/items", token=WRONG_TOKEN)[0] == 401
        assert app.call("POST", "/items", body={"name": "x"})[0] == 401
        assert app.call("GET", "/whoami", token=TOKEN) == (200, "application/json", {"token": "current"})

        status, _, created = app.call("POST", "/items", token=TOKEN, body={"name": "Hello World"})
        assert status == 201
        assert created["name"] == "Hello World"
        assert created["slug"] == "hello-world"
        assert app.call("POST", "/items", token=TOKEN, body={"name": ""})[0] == 400
        assert app.call("POST", "/items", token=TOKEN, body=["not", "an", "object"])[0] == 400

        assert postgres.query(database, "SELECT id, name, slug FROM items") == [
            [created["id"], "Hello World", "hello-world"]
        ]
        item_file = Path(env["REFAPP_DATA_DIR"], "items", f"{created['id']}.json")
        assert json.loads(item_file.read_text()) == created

        assert app.call("GET", f"/items/{created['id']}", token=TOKEN) == (200, "application/json", created)
        assert app.call("GET", "/items", token=TOKEN)[2] == {"items": [created]}
        assert app.call("GET", "/items/999999", token=TOKEN)[0] == 404
        assert app.call("GET", "/nope")[0] == 404
        assert app.call("DELETE", "/items")[0] == 405


def test_previous_token_accepted_only_while_listed(releases, make_env, database, tmp_path):
    log = tmp_path / "serve.log"
    env = make_env(database, REFAPP_API_TOKEN_PREVIOUS=f" {OLD_TOKEN} , another-old-one")
    assert run(releases["1.1.0"], "migrate", env).returncode == 0
    with serving(releases["1.1.0"], env, log) as app:
        assert app.call("GET", "/whoami", token=TOKEN)[2] == {"token": "current"}
        assert app.call("GET", "/whoami", token=OLD_TOKEN)[2] == {"token": "previous"}
        assert app.call("GET", "/items", token=OLD_TOKEN)[0] == 200
        health = app.call("GET", "/health")[2]

    # Rotation finished: the old token is dropped from the environment and the service restarted.
    env["REFAPP_API_TOKEN_PREVIOUS"] = ""
    with serving(releases["1.1.0"], env, log) as app:
        assert app.call("GET", "/whoami", token=OLD_TOKEN)[0] == 401
        assert app.call("GET", "/whoami", token=TOKEN)[2] == {"token": "current"}

    visible = log.read_text() + json.dumps(health)
    for secret in (TOKEN, OLD_TOKEN, DB_PASSWORD):
        assert secret not in visible


def test_metrics_exposition_counts_requests(releases, make_env, database, tmp_path):
    env = make_env(database)
    assert run(releases["1.1.0"], "migrate", env).returncode == 0
    started = time.time()
    with serving(releases["1.1.0"], env, tmp_path / "serve.log") as app:
        app.call("GET", "/health")
        app.call("GET", "/health")
        app.call("GET", "/items")
        item = app.call("POST", "/items", token=TOKEN, body={"name": "one"})[2]
        app.call("GET", f"/items/{item['id']}", token=TOKEN)
        app.call("GET", "/items/424242", token=TOKEN)
        status, content_type, text = app.call("GET", "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert families["refapp_http_requests"].type == "counter"
    assert families["refapp_http_request_duration_seconds"].type == "histogram"
    assert sample("refapp_build_info", version="1.1.0", instance="acme") == 1
    assert sample("refapp_database_up") == 1
    assert sample("refapp_items") == 1
    # The launcher runs under the system Python, started (at the earliest) just before `started`.
    assert started - 5 < sample("refapp_start_time_seconds") <= time.time()
    # The scrape itself is counted after its body is rendered; the startup probe counts as one /health.
    assert sample("refapp_http_requests_total", method="GET", path="/health", code="200") == 3
    assert sample("refapp_http_requests_total", method="GET", path="/items", code="401") == 1
    assert sample("refapp_http_requests_total", method="POST", path="/items", code="201") == 1
    assert sample("refapp_http_requests_total", method="GET", path="/items/{id}", code="200") == 1
    assert sample("refapp_http_requests_total", method="GET", path="/items/{id}", code="404") == 1
    assert not [key for key in samples if ("path", f"/items/{item['id']}") in key[1]]
    assert sample("refapp_http_request_duration_seconds_count", path="/items/{id}") == 2
    assert sample("refapp_http_request_duration_seconds_bucket", path="/health", le="+Inf") == 3


def test_health_fails_on_pending_migration_or_unreachable_database(releases, make_env, database, tmp_path):
    env = make_env(database)
    with serving(releases["1.1.0"], env, tmp_path / "serve.log") as app:
        status, _, health = app.call("GET", "/health")
    assert status == 503
    assert (health["status"], health["database"], health["schema"]) == ("failing", "reachable", 0)

    env = make_env(database, REFAPP_DB_PORT=str(free_port()))
    with serving(releases["1.1.0"], env, tmp_path / "serve.log") as app:
        status, _, health = app.call("GET", "/health")
        assert app.call("GET", "/items", token=TOKEN)[0] == 503
        metrics = app.call("GET", "/metrics")[2]
    assert status == 503
    assert (health["status"], health["database"]) == ("failing", "unreachable")
    assert "refapp_database_up 0\n" in metrics


def test_upgrade_backfills_and_rollback_stays_healthy(releases, make_env, database, postgres, tmp_path):
    env = make_env(database)
    log = tmp_path / "serve.log"
    assert run(releases["1.0.0"], "migrate", env).stdout == "applied 0001_create_items\n"
    with serving(releases["1.0.0"], env, log) as app:
        assert app.call("GET", "/health")[2]["schema"] == 1
        for name in ("Hello World", "  Rust & Go! "):
            assert app.call("POST", "/items", token=TOKEN, body={"name": name})[0] == 201
        assert "slug" not in app.call("GET", "/items/1", token=TOKEN)[2]

    upgraded = run(releases["1.1.0"], "migrate", env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == "applied 0002_items_slug\n"
    again = run(releases["1.1.0"], "migrate", env)
    assert (again.returncode, again.stdout) == (0, "nothing to apply; schema level 2\n")

    assert postgres.query(database, "SELECT id, name, slug FROM items ORDER BY id") == [
        [1, "Hello World", "hello-world"],
        [2, "Rust & Go!", "rust-go"],
    ]
    nullable = postgres.query(
        database,
        "SELECT is_nullable FROM information_schema.columns"
        " WHERE table_name = 'items' AND column_name = 'slug'",
    )
    assert nullable == [["NO"]]

    with serving(releases["1.1.0"], env, log) as app:
        status, _, health = app.call("GET", "/health")
        assert (status, health["version"], health["schema"]) == (200, "1.1.0", 2)
        assert app.call("GET", "/items/2", token=TOKEN)[2]["slug"] == "rust-go"
        assert app.call("POST", "/items", token=TOKEN, body={"name": "New in 1.1"})[2]["slug"] == "new-in-1-1"

    # Roll back the binary, not the schema: 1.0.0 must stay healthy and writable on schema 2.
    with serving(releases["1.0.0"], env, log) as app:
        status, _, health = app.call("GET", "/health")
        assert (status, health["status"], health["version"], health["schema"]) == (200, "ok", "1.0.0", 2)
        assert app.call("POST", "/items", token=TOKEN, body={"name": "after rollback"})[0] == 201
        assert [item["name"] for item in app.call("GET", "/items", token=TOKEN)[2]["items"]] == [
            "Hello World",
            "Rust & Go!",
            "New in 1.1",
            "after rollback",
        ]
    assert run(releases["1.0.0"], "migrate", env).stdout == "nothing to apply; schema level 2\n"


def test_down_migration_returns_to_the_previous_schema_keeping_rows(releases, make_env, database, postgres, tmp_path):
    env = make_env(database)
    assert run(releases["1.0.0"], "migrate", env).returncode == 0
    assert run(releases["1.1.0"], "migrate", env).stdout == "applied 0002_items_slug\n"
    with serving(releases["1.1.0"], env, tmp_path / "serve.log") as app:
        assert app.call("POST", "/items", token=TOKEN, body={"name": "New in 1.1"})[0] == 201

    down = releases["1.1.0"].with_name("refapp-migrate-down")
    result = subprocess.run([str(down)], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "reverted 0002_items_slug\nschema level 1\n"), result.stderr
    assert postgres.query(database, "SELECT name FROM items") == [["New in 1.1"]]
    assert postgres.query(database, "SELECT max(version) FROM schema_migrations") == [[1]]
    again = subprocess.run([str(down)], env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (0, "nothing to revert; schema level 1\n")
    with serving(releases["1.0.0"], env, tmp_path / "serve.log") as app:
        status, _, health = app.call("GET", "/health")
        assert (status, health["version"], health["schema"]) == (200, "1.0.0", 1)
    # A release without down-migrations undoes nothing.
    assert run(releases["1.1.0"], "migrate", env).returncode == 0
    assert run(releases["1.4.0"], "migrate-down", env).stdout == "nothing to revert; schema level 2\n"


def test_failed_migration_rolls_back_and_exits_nonzero(releases, make_env, database, postgres):
    env = make_env(database)
    assert run(releases["1.0.0"], "migrate", env).returncode == 0
    with contextlib.closing(postgres.connect(database, DB_USER)) as conn:
        conn.run("ALTER TABLE items ADD COLUMN slug integer")  # collides with migration 0002

    result = run(releases["1.1.0"], "migrate", env)
    assert result.returncode == 1
    assert "migration 0002_items_slug failed" in result.stderr
    assert "already exists" in result.stderr
    assert DB_PASSWORD not in result.stderr + result.stdout
    assert postgres.query(database, "SELECT max(version) FROM schema_migrations") == [[1]]


def test_release_1_2_0_serves_but_reports_failing(releases, make_env, database, tmp_path):
    env = make_env(database)
    migrated = run(releases["1.2.0"], "migrate", env)
    assert migrated.returncode == 0
    assert "requires schema 3" in migrated.stderr
    with serving(releases["1.2.0"], env, tmp_path / "serve.log") as app:
        status, _, health = app.call("GET", "/health")
        assert app.call("GET", "/whoami", token=TOKEN)[0] == 200
    assert status == 503
    assert health["status"] == "failing"
    assert health["version"] == "1.2.0"
    assert (health["database"], health["schema"], health["expected_schema"]) == ("reachable", 2, 3)


def test_release_1_3_0_fails_only_under_load(releases, make_env, database, tmp_path):
    env = make_env(database)
    assert run(releases["1.3.0"], "migrate", env).returncode == 0
    with serving(releases["1.3.0"], env, tmp_path / "serve.log") as app:
        quiet = [app.call("GET", "/items", token=TOKEN)[0] for _ in range(3)]
        with ThreadPoolExecutor(8) as pool:  # well over 4 requests within 2 s
            busy = list(pool.map(lambda _: app.call("GET", "/items", token=TOKEN)[0], range(40)))
        status, _, health = app.call("GET", "/health")
    assert quiet == [200, 200, 200]
    assert busy.count(500) >= 5 and busy.count(200) >= 5, busy
    assert (status, health["status"], health["version"]) == (200, "ok", "1.3.0")
