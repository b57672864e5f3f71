"""A throwaway PostgreSQL server from Debian's postgresql-15 binaries: a cluster in a temp dir, owned by
`postgres` when the tests run as root, on a free port of 127.0.0.1 with a scram superuser password."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self):
        # Not under pytest's tmp_path (a root-only directory): the cluster belongs to `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="fleetdeck-pg-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.data = self.base / "data"

    def _pg(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, cwd=self.base)

    def start(self) -> PostgresServer:
        if self.as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "start", "-o",
                 f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base} "
                 "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        return self

    def stop(self) -> None:
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres", params: tuple | None = None) -> list[tuple]:
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self) -> str:
        """A fresh, empty database; its URL (with the password)."""
        name = "runner_" + secrets.token_hex(6)
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def dump(self, url: str) -> bytes:
        """All a database holds, as pg_dump's SQL text."""
        return subprocess.run([str(PG_BIN / "pg_dump"), "--dbname", url], check=True, capture_output=True).stdout
