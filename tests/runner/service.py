"""A runner service environment around a test fleet: inventory with vaulted secrets, tokens, settings."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fleetdeck import vault
from fleetdeck.service.app import create_app
from fleetdeck.service.config import Settings, from_env

from tests.playbook import BIN, REPO

CATALOG = Path(__file__).with_name("actions.yml")
SCOPES = {
    "admin": ["admin"],
    "reader": ["read"],
    "pinger": ["read", "run:ping"],
    "operator": ["read", "run:*"],
    "provisioner": ["read", "provision"],
}


@dataclass
class RunnerEnv:
    dir: Path
    inventory: Path
    password_file: Path
    tokens: dict[str, str]  # name -> plaintext
    secrets: dict[str, str]  # host -> its vault value
    env: dict[str, str]  # FLEETDECK_* settings

    def settings(self, **overrides: str) -> Settings:
        return from_env({**self.env, **overrides})

    def auth(self, name: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def make_env(fleet, base: Path, store=None) -> RunnerEnv:
    """An environment dir (hosts.yml, host_vars with a vaulted secret per host) for `fleet`; `store` is the
    runner_store fixture (tests/runner/conftest.py)."""
    tree = yaml.safe_load(fleet.inventory.read_text())
    hosts = [h.name for h in fleet.hosts]
    return _make_env(base, tree, hosts, fleet.vault_password_file, fleet.ansible_env(), store)


LOCAL_HOSTS = ("local-1", "local-2", "local-3")


def make_local_env(base: Path, store=None) -> RunnerEnv:
    """The same without test hosts: group `testfleet` of hosts with `ansible_connection: local`, so the
    test playbooks run for real, on this machine. For what needs no fleet: validation, auth, errors,
    idempotency, OpenAPI."""
    base.mkdir(parents=True, exist_ok=True)
    password_file = base / "vault-pass"
    password_file.write_text(secrets.token_hex(24))
    password_file.chmod(0o600)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    tree = {"all": {"children": {"testfleet": {"hosts": dict.fromkeys(LOCAL_HOSTS, local)}}}}
    ansible_env = {"FLEETDECK_VAULT_PASSWORD_FILE": str(password_file)}
    return _make_env(base, tree, list(LOCAL_HOSTS), password_file, ansible_env, store)


def _make_env(base: Path, tree: dict, hosts: list[str], password_file: Path, ansible_env: dict, store) -> RunnerEnv:
    inventory = base / "env"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    host_secrets = {}
    for host in hosts:
        host_dir = inventory / "host_vars" / host
        host_dir.mkdir()
        host_secrets[host] = f"s3cr3t-{secrets.token_hex(12)}"
        (host_dir / "main.yml").write_text('app_secret: "{{ vault_app_secret }}"\n')
        vault.encrypt_file(
            host_dir / "vault.yml",
            {"vault_app_secret": host_secrets[host]},
            vault.read_password(password_file),
        )
    return env_over(base, inventory, password_file, ansible_env, host_secrets, store=store)


def env_over(base: Path, inventory: Path, password_file: Path, ansible_env: dict, host_secrets: dict | None = None,
             catalog: Path = CATALOG, store=None) -> RunnerEnv:
    """Tokens and settings of a runner over an existing environment directory; its store SQLite unless
    `store` (the runner_store fixture) says otherwise. A fixed replica id: a restarted service is the
    same replica, as a SQLite runner's restart is."""
    tokens = {name: secrets.token_urlsafe(32) for name in SCOPES}
    env = {
        "FLEETDECK_RUNNER_TOKENS": json.dumps(
            [{"name": n, "token": t, "scopes": SCOPES[n]} for n, t in tokens.items()]
        ),
        "FLEETDECK_PROJECT_DIR": str(REPO),
        "FLEETDECK_INVENTORY": str(inventory),
        "FLEETDECK_RUNNER_DATA_DIR": str(base / "data"),
        "FLEETDECK_CATALOG": str(catalog),
        "FLEETDECK_RUNNER_CANCEL_GRACE": "3",
        "FLEETDECK_REPLICA_ID": "runner-1",
        **(store.env() if store else {}),
        **ansible_env,
    }
    return RunnerEnv(base, inventory, password_file, tokens, host_secrets or {}, env)


@contextmanager
def in_process(runner_env: RunnerEnv) -> Iterator[RunnerEnv]:
    """This process gets the environment a run needs (vault password, paths), not the service's settings:
    those go to create_app (`app_for`)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in runner_env.env.items():
            if not key.startswith("FLEETDECK_RUNNER_"):
                mp.setenv(key, value)
        yield runner_env


@contextmanager
def app_for(runner_env: RunnerEnv, **overrides: str):
    """The Flask app of a service in this process (for its test client), its executor stopped afterwards."""
    application = create_app(runner_env.settings(**overrides))
    try:
        yield application
    finally:
        application.extensions["fleetdeck"].executor.shutdown()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s: {predicate}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env, port: int):
        self.env, self.base = env, f"http://127.0.0.1:{port}"
        self.full_env = {**os.environ, **env.env, "FLEETDECK_RUNNER_BIND": f"127.0.0.1:{port}"}
        self.log = env.dir / "server.log"
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "fleetdeck-runner")],
                env=self.full_env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self.ready(), timeout=30)

    def ready(self) -> bool:
        try:
            return self.call("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        caller: str | None = "admin",
        headers: dict | None = None,
    ):
        request = urllib.request.Request(  # noqa: S310 - a local test server
            self.base + path,
            method=method,
            headers={
                **({"Authorization": f"Bearer {self.env.tokens[caller]}"} if caller else {}),
                **({"Content-Type": "application/json"} if body is not None else {}),
                **(headers or {}),
            },
            data=json.dumps(body).encode() if body is not None else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                raw = response.read().decode()
                return response.status, json.loads(
                    raw
                ) if response.headers.get_content_type() == "application/json" else raw
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def kill(self):
        """SIGKILL the whole gunicorn process group: no shutdown hook runs, as in a crash."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def run_environments(run_id: str) -> dict[int, bytes]:
    """/proc/<pid>/environ of every process of a run (found by its FLEETDECK_RUN_SOURCE marker)."""
    marker = f"FLEETDECK_RUN_SOURCE=runner:{run_id}\0".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes() + b"\0"
            except OSError:
                continue
            if marker in environ:
                found[int(proc.name)] = environ
    return found
