"""PostgreSQL access: connections, numbered SQL migrations and the items table."""

import re
import ssl
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from importlib import resources

import pg8000.native

from refapp.config import Config

Error = pg8000.native.Error
# Serialises concurrent `refapp migrate` runs against one database.
MIGRATION_LOCK = 0x7265_6661


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str


# TLS when the server offers it, unverified, else plain: pg8000's default, except that pg8000 builds a context
# per connection, loading the CA bundle (about 20 ms of CPU), and the app connects once per request.
_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE
_refuses_tls: set[tuple[str, int]] = set()


def connect(cfg: Config) -> pg8000.native.Connection:
    params = dict(
        user=cfg.db_user,
        password=cfg.db_password,
        host=cfg.db_host,
        port=cfg.db_port,
        database=cfg.db_name,
        timeout=5,
        application_name=f"refapp {cfg.instance}".strip(),
    )
    server = (cfg.db_host, cfg.db_port)
    if server not in _refuses_tls:
        try:
            return pg8000.native.Connection(**params, ssl_context=_TLS)
        except pg8000.native.InterfaceError as exc:
            if "refuses SSL" not in str(exc):
                raise
            _refuses_tls.add(server)
    return pg8000.native.Connection(**params, ssl_context=False)


def describe(exc: Exception) -> str:
    """A one-line reason for a driver error; PostgreSQL errors carry a field dict."""
    detail = exc.args[0] if exc.args else exc
    if isinstance(detail, dict):
        return f"{detail.get('M', 'error')} ({detail.get('C', '?')})"
    return str(detail) or type(exc).__name__


def migrations(suffix: str = ".sql") -> list[Migration]:
    """The shipped migrations (NNNN_name.sql), or with suffix ".down.sql" the down-migrations undoing them."""
    found = []
    for entry in resources.files("refapp").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)" + re.escape(suffix), entry.name)
        if match:
            found.append(Migration(int(match[1]), f"{match[1]}_{match[2]}", entry.read_text()))
    return sorted(found, key=lambda m: m.number)


def schema_level(conn: pg8000.native.Connection) -> int:
    if conn.run("SELECT to_regclass('schema_migrations') IS NULL")[0][0]:
        return 0
    return conn.run("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0]


def migrate(cfg: Config, report: Callable[[str], None]) -> list[Migration]:
    """Apply pending migrations, one transaction each; return those applied."""
    applied = []
    with closing(connect(cfg)) as conn:
        conn.run("SELECT pg_advisory_lock(:key)", key=MIGRATION_LOCK)
        conn.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.run("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.number in done:
                continue
            conn.run("START TRANSACTION")
            try:
                conn.run(migration.sql)
                conn.run(
                    "INSERT INTO schema_migrations (version, name) VALUES (:v, :n)",
                    v=migration.number,
                    n=migration.name,
                )
                conn.run("COMMIT")
            except Error as exc:
                conn.run("ROLLBACK")
                raise MigrationError(f"migration {migration.name} failed: {describe(exc)}") from exc
            report(f"applied {migration.name}")
            applied.append(migration)
    return applied


def migrate_down(cfg: Config, report: Callable[[str], None]) -> list[Migration]:
    """Undo the applied migrations this release ships down-migrations for, newest first, one transaction each;
    stops at the first applied migration it cannot undo. Returns those undone."""
    undo = {m.number: m for m in migrations(".down.sql")}
    undone = []
    with closing(connect(cfg)) as conn:
        conn.run("SELECT pg_advisory_lock(:key)", key=MIGRATION_LOCK)
        if conn.run("SELECT to_regclass('schema_migrations') IS NULL")[0][0]:
            return undone
        for (number,) in conn.run("SELECT version FROM schema_migrations ORDER BY version DESC"):
            if number not in undo:
                break
            conn.run("START TRANSACTION")
            try:
                conn.run(undo[number].sql)
                conn.run("DELETE FROM schema_migrations WHERE version = :v", v=number)
                conn.run("COMMIT")
            except Error as exc:
                conn.run("ROLLBACK")
                raise MigrationError(f"down-migration {undo[number].name} failed: {describe(exc)}") from exc
            report(f"reverted {undo[number].name}")
            undone.append(undo[number])
    return undone


def slugify(name: str) -> str:
    # Same rule as the backfill in migration 0002.
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


class Items:
    """The items table as seen by a release that expects schema level `schema`."""

    def __init__(self, schema: int):
        self.with_slug = schema >= 2
        self.columns = ("id", "name", "created_at", *(("slug",) if self.with_slug else ()))
        # S608: the interpolated column lists are the constants above, never request data.
        self._select = f"SELECT {', '.join(self.columns)} FROM items"  # noqa: S608

    def _row(self, row: list) -> dict:
        item = dict(zip(self.columns, row, strict=True))
        item["created_at"] = item["created_at"].isoformat()
        return item

    def probe(self, conn: pg8000.native.Connection) -> None:
        """Fails if the columns this release reads are missing."""
        conn.run(self._select + " LIMIT 0")

    def count(self, conn: pg8000.native.Connection) -> int:
        return conn.run("SELECT count(*) FROM items")[0][0]

    def all(self, conn: pg8000.native.Connection) -> list[dict]:
        return [self._row(row) for row in conn.run(self._select + " ORDER BY id")]

    def get(self, conn: pg8000.native.Connection, item_id: int) -> dict | None:
        rows = conn.run(self._select + " WHERE id = :id", id=item_id)
        return self._row(rows[0]) if rows else None

    def insert(self, conn: pg8000.native.Connection, name: str) -> dict:
        """Insert inside an open transaction; the caller commits."""
        returning = ", ".join(self.columns)
        if self.with_slug:
            sql = f"INSERT INTO items (name, slug) VALUES (:name, :slug) RETURNING {returning}"  # noqa: S608
            return self._row(conn.run(sql, name=name, slug=slugify(name))[0])
        sql = f"INSERT INTO items (name) VALUES (:name) RETURNING {returning}"  # noqa: S608
        return self._row(conn.run(sql, name=name)[0])
