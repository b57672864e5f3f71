"""A cheap status probe of each instance, cached: one SSH connection (paramiko, the host key checked against the
environment's known_hosts) runs PROBE on the instance, which asks the app's health URL once and reads the release
facts the app role records. Healthy and the version format are the project's own definitions (the collection's
module_utils.health, fleetdeck.validate). Probes run in parallel and in the background: a page waits at most
WAIT seconds for instances it has never seen probed, and otherwise shows the last result with its age."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import paramiko
import yaml

from fleetdeck import inventory, scaffold, validate
from fleetdeck.errors import FleetdeckError
from fleetdeck.takeover import profile

from .redaction import Redactor

sys.path.append(str(scaffold.REPO / "collections"))
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.health import (
    BODY_LIMIT,
    describe_answer,
    is_healthy,
    parse_body,
)

TTL = 30.0  # seconds a result is fresh; older ones are still shown, with their age, while a new probe runs
TIMEOUT = 5.0  # SSH connect, authentication and the health request each
WAIT = 3.0
PARALLEL = 16
APP_DEFAULTS = scaffold.REPO / "roles" / "app" / "defaults" / "main.yml"
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - a URL, not HTML
# Runs on the instance with python3 (argv: health URL); prints JSON, changes nothing. The fact file is the
# release state roles/app/tasks/record.yml writes.
PROBE = r"""
import json, sys, urllib.error, urllib.request
out = {"code": -1, "body": "", "error": None, "release": None}
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as answer:
        out["code"], out["body"] = answer.status, answer.read(int(sys.argv[3])).decode("utf-8", "replace")
except urllib.error.HTTPError as exc:
    out["code"], out["body"] = exc.code, exc.read(int(sys.argv[3])).decode("utf-8", "replace")
except Exception as exc:
    out["error"] = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
try:
    with open("/etc/ansible/facts.d/app.fact") as facts:
        out["release"] = json.load(facts)
except (OSError, ValueError):
    pass
print(json.dumps(out))
"""


@dataclass
class Probe:
    """One probe's result: reachable over SSH, healthy per module_utils.health, the version the app reports."""

    at: float
    reachable: bool
    healthy: bool = False
    version: str | None = None
    detail: str = ""
    history: list[dict] = field(default_factory=list)

    def public(self, now: float) -> dict:
        return {"reachable": self.reachable, "healthy": self.healthy, "version": self.version,
                "detail": self.detail, "age_seconds": round(now - self.at)}


def health_url(env: Path, settings: dict) -> str:
    """app_health_url as the app role resolves it from its defaults, group_vars/all and the instance's vars
    (a few passes for values that name other variables, e.g. app_port)."""
    merged = {**(yaml.safe_load(APP_DEFAULTS.read_text()) or {}), **profile(env), **settings}
    value = str(merged.get("app_health_url", ""))
    for _ in range(5):
        if "{{" not in value:
            return value
        try:
            value = _JINJA.from_string(value).render(merged)
        except jinja2.TemplateError as exc:
            raise FleetdeckError(f"app_health_url cannot be resolved without Ansible: {exc}") from None
    raise FleetdeckError("app_health_url cannot be resolved without Ansible: nested too deeply")


def probe(env: Path, name: str, settings: dict) -> Probe:
    now = time.time()
    try:
        url = health_url(env, settings)
        answer = _ssh(env, name, settings, ["python3", "-", url, str(TIMEOUT), str(BODY_LIMIT)], PROBE)
    except (FleetdeckError, OSError, paramiko.SSHException, EOFError) as exc:
        return Probe(now, reachable=False, detail=f"{name}: {exc}")
    release = answer["release"] if isinstance(answer["release"], dict) else {}
    history = release.get("history", []) if isinstance(release.get("history"), list) else []
    if answer["error"]:
        return Probe(now, reachable=True, version=_version(release.get("current")),
                     detail=f"{url}: {answer['error']}", history=history)
    body = parse_body(answer["body"].encode())
    # As the smoke check: the version the app reports, else the release its facts record as current.
    reported = _version(body.get("version")) if isinstance(body, dict) else None
    return Probe(now, reachable=True, healthy=is_healthy(answer["code"], body),
                 version=reported or _version(release.get("current")),
                 detail=describe_answer(answer["code"], body), history=history)


def _version(value: object) -> str | None:
    return str(value) if value is not None and validate.VERSION_RE.match(str(value)) else None


def _ssh(env: Path, name: str, settings: dict, argv: list[str], stdin: str) -> dict:
    """PROBE's JSON answer over one SSH connection as ansible would make it (address, port, user, key)."""
    known_hosts = env / "known_hosts"
    if not known_hosts.is_file():
        raise FleetdeckError(f"{known_hosts} does not exist: no pinned host key to check the instance against")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = settings.get("ansible_ssh_private_key_file") or os.environ.get("ANSIBLE_PRIVATE_KEY_FILE")
    try:
        client.connect(settings.get("ansible_host") or name, port=int(settings.get("ansible_port", 22)),
                       username=settings.get("ansible_user") or os.environ.get("ANSIBLE_REMOTE_USER", "root"),
                       key_filename=key, timeout=TIMEOUT, banner_timeout=TIMEOUT, auth_timeout=TIMEOUT)
        stdin_, stdout, _ = client.exec_command(shlex.join(argv), timeout=TIMEOUT * 2)
        stdin_.write(stdin)
        stdin_.channel.shutdown_write()
        text = stdout.read().decode("utf-8", "replace")
    finally:
        client.close()
    try:
        return json.loads(text)
    except ValueError:
        raise FleetdeckError(f"the probe's answer is not JSON (is python3 installed?): {text[:200]!r}") from None


class Probes:
    """The probe cache of one runner (in memory: a restart probes again). What the app answers is masked like
    run output (redaction.py): a health body could echo a secret."""

    def __init__(self, env: Path, password_file: Path | None, also: tuple[str | None, ...] = ()):
        self.env, self._password_file, self._also = env, password_file, also
        self._redactor: tuple[float, Redactor] | None = None
        self._results: dict[tuple[str, str], Probe] = {}
        self._running: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._pool = futures.ThreadPoolExecutor(PARALLEL, thread_name_prefix="probe")

    def results(self, inv: inventory.Inventory, names: list[str], wait: bool = True) -> dict[str, Probe | None]:
        """Each instance's latest probe (None: not probed yet); stale ones are probed again meanwhile. With
        `wait`, instances never probed get up to WAIT seconds."""
        now, waiting, keys = time.time(), [], {}
        with self._lock:
            for name in names:
                settings = inv.public_vars(name)
                keys[name] = key = (name, str(settings.get("ansible_host", "")))
                known = self._results.get(key)
                if known is not None and now - known.at < TTL:
                    continue
                if key not in self._running:
                    self._running[key] = self._pool.submit(self._probe, key, settings)
                if known is None and wait:
                    waiting.append(self._running[key])
        if waiting:
            futures.wait(waiting, timeout=WAIT)
        with self._lock:
            return {name: self._results.get(key) for name, key in keys.items()}

    def _masking(self) -> Redactor:
        """The redactor of the inventory's secrets, read again when older than TTL (vaults change)."""
        with self._lock:
            cached = self._redactor
        if cached is None or time.time() - cached[0] > TTL:
            cached = (time.time(), Redactor.from_inventory(self.env, self._password_file, self._also))
            with self._lock:
                self._redactor = cached
        return cached[1]

    def forget(self, names: list[str]) -> None:
        """Drop these instances' results (a run on them ended: what was probed before may be stale)."""
        with self._lock:
            for key in [k for k in self._results if k[0] in names]:
                del self._results[key]

    def _probe(self, key: tuple[str, str], settings: dict) -> None:
        try:
            result = probe(self.env, key[0], settings)
            redactor = self._masking()
            result.detail, result.history = redactor.text(result.detail), redactor.data(result.history)
        except Exception as exc:  # whatever failed, the instance shows why instead of staying unprobed
            result = Probe(time.time(), reachable=False, detail=f"{key[0]}: probe failed: {type(exc).__name__}")
        with self._lock:
            self._results[key] = result
            self._running.pop(key, None)
