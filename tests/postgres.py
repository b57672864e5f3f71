"""A throwaway PostgreSQL server from Debian's binaries (postgresql-15, which scripts/setup installs), for
tests and benchmarks: its own cluster in a temporary directory, on 127.0.0.1, removed on exit."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pg8000.native

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Server:
    port: int
    superuser_password: str

    def connect(self, database: str = "postgres", user: str = "postgres",
                password: str | None = None) -> pg8000.native.Connection:
        return pg8000.native.Connection(user, password=password or self.superuser_password, host="127.0.0.1",
                                        port=self.port, database=database)

    def url(self, database: str, user: str, password: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"


@contextmanager
def server(port: int) -> Iterator[Server]:
    """initdb + pg_ctl start on `port` (scram-sha-256 logins, fsync off); stopped and deleted afterwards."""
    # Under root the cluster belongs to `postgres` (PostgreSQL refuses to run as root), so the directory is
    # made here rather than under pytest's root-only tmp_path.
    base = Path(tempfile.mkdtemp(prefix="fleetdeck-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    superuser_password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    data = base / "data"

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, cwd=base)

    try:
        pg(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
           f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync")
        pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start", "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off")
        try:
            yield Server(port, superuser_password)
        finally:
            pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base)
