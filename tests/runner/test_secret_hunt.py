"""The secret hunt: a session of runs on the real service (successful, failed, check + diff, canceled,
SIGKILLed mid-run), then every byte the runner wrote or served is searched for every secret it knows.

Searched: the store (runner.db, -wal, -shm; on PostgreSQL a pg_dump of its database), every run directory, the
caches the runs' strategy keeps on disk (compiled templates, Mitogen's import lists and sources; on the hosts,
compiled modules), the service log, every HTTP body and SSE stream the session received (the API's and every
console page, form answer and console stream, signed in), and the hub callbacks. Secrets: every vault value of
the inventory (a multi-line private key, a password that JSON and URL encoding change, a token), each line of
them, the API tokens, the console password, the webhook and hub HMAC secrets, the vault password and the
database password; as they are, JSON-escaped, URL-encoded, and base64-encoded (found by decoding every
base64-looking run at each offset, so the search shares no code with the redaction it checks). The environment
of the run's processes is checked while a run is running.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import http.client
import http.server
import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode

import pytest
import yaml
from fleetdeck import vault
from fleetdeck.service.redaction import MIN_LINE_LENGTH
from werkzeug.security import generate_password_hash

from tests.runner.service import Server, free_port, make_env, run_environments, wait_until

FLEET_SIZE = 2
pytestmark = pytest.mark.fleet
ARMOR = re.compile(r"-----(BEGIN|END) [A-Z ]+-----")
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}")


class Hub(http.server.ThreadingHTTPServer):
    """Receives the runner's run.finished callbacks and keeps their bodies."""

    def __init__(self):
        self.bodies: list[bytes] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                hub.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


class Session:
    """HTTP calls to the service that keep every body received."""

    def __init__(self, server: Server, tokens: dict[str, str]):
        self.server, self.tokens = server, tokens
        self.bodies: list[bytes] = []

    def call(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the local test service
            self.server.base + path,
            method=method,
            data=data,
            headers={"Authorization": f"Bearer {self.tokens['admin']}", "Content-Type": "application/json",
                     **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        self.bodies.append(payload)
        return status, payload

    def json(self, method: str, path: str, body=None) -> dict:
        return json.loads(self.call(method, path, body)[1])

    def stream(self, run_id: str) -> bytes:
        """The run's SSE stream until its end event, or until the connection breaks (a killed service)."""
        request = urllib.request.Request(  # noqa: S310
            f"{self.server.base}/v1/runs/{run_id}/events",
            headers={"Authorization": f"Bearer {self.tokens['admin']}", "Accept": "text/event-stream"},
        )
        received = bytearray()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
                while chunk := response.read1(65536):
                    received += chunk
        except (OSError, http.client.HTTPException):
            pass
        self.bodies.append(bytes(received))
        return bytes(received)

    def page(self, path: str, form: dict | None = None, stream: bool = False) -> bytes:
        """A console page (or form POST, or a run's SSE stream) with the session cookie, kept like the rest.
        The cookie is Secure: urllib's cookie jar would not send it over http, so it is carried by hand."""
        request = urllib.request.Request(  # noqa: S310 - the local test service
            self.server.base + path, method="POST" if form is not None else "GET",
            data=urlencode({"csrf_token": self.csrf, **form}).encode() if form is not None else None,
            headers={"Cookie": self.cookie, **({"Accept": "text/event-stream"} if stream else {})})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=120) as response:
                payload, headers = response.read(), response.headers
        except urllib.error.HTTPError as exc:
            payload, headers = exc.read(), exc.headers
        if headers.get("Set-Cookie"):
            self.cookie = headers["Set-Cookie"].split(";", 1)[0]
        self.bodies.append(payload)
        return payload

    def sign_in(self, name: str, password: str) -> None:
        self.cookie = ""
        self.csrf = re.search(rb'name="csrf_token" value="([^"]+)"', self.page("/ui/sign-in")).group(1).decode()
        self.page("/ui/sign-in", {"name": name, "password": password})
        fleet = self.page("/ui/")
        assert b"csrf_token" in fleet, "the console sign-in failed"
        self.csrf = re.search(rb'name="csrf_token" value="([^"]+)"', fleet).group(1).decode()  # a new session's

    def start(self, **body) -> str:
        status, payload = self.call("POST", "/v1/runs", {"target": "testfleet", "action": "hunt", **body})
        assert status == 202, payload
        return json.loads(payload)["id"]

    def finished(self, run_id: str, timeout: float = 120) -> dict:
        return wait_until(
            lambda: (lambda r: r if r["status"] not in ("queued", "waiting", "running") else None)(
                self.json("GET", f"/v1/runs/{run_id}")
            ),
            timeout,
        )


def ssh_private_key(directory: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "hunt",
                    "-f", str(directory / "hunt_key")], check=True)
    return (directory / "hunt_key").read_text()


def vault_secrets(env, fleet, base: Path) -> dict[str, str]:
    """Give each host a private key, a password with characters encodings change, and a token."""
    password = vault.read_password(env.password_file)
    found = {}
    for host in fleet.hosts:
        host_dir = env.inventory / "host_vars" / host.name
        (base / host.name).mkdir(parents=True)
        values = {
            "vault_app_secret": env.secrets[host.name],
            "vault_deploy_key": ssh_private_key(base / host.name),
            "vault_db_password": f'p@ss "w/rd"&x={secrets.token_hex(4)}+ü%2F\\end',
        }
        vault.encrypt_file(host_dir / "vault.yml", values, password)
        (host_dir / "main.yml").write_text(yaml.safe_dump({
            "app_secret": "{{ vault_app_secret }}",
            "deploy_key": "{{ vault_deploy_key }}",
            "db_password": "{{ vault_db_password }}",
        }))
        found |= {f"{host.name}:{k}": v for k, v in values.items()}
    return found


def pieces(secret: str) -> list[str]:
    """The secret and each of its lines that is not key armor and at least MIN_LINE_LENGTH long (the
    redaction's documented limit: shorter lines of a multi-line value are not secrets on their own)."""
    lines = [line.strip() for line in secret.strip().splitlines()]
    if len(lines) == 1:
        return [secret]
    return [secret, *(ln for ln in lines if len(ln) >= MIN_LINE_LENGTH and not ARMOR.fullmatch(ln))]


def needles(all_secrets: dict[str, str]) -> dict[bytes, str]:
    found = {}
    for name, secret in all_secrets.items():
        for i, piece in enumerate(pieces(secret)):
            label = name if i == 0 else f"{name} line {i}"
            for form in (piece, json.dumps(piece)[1:-1], json.dumps(piece, ensure_ascii=False)[1:-1],
                         quote(piece, safe=""), quote(piece), quote_plus(piece)):
                found[form.encode()] = label
    return found


def base64_decoded(blob: bytes) -> bytes:
    """Every base64-looking run of `blob` decoded from each of its first 4 offsets, in both alphabets."""
    out = []
    for match in BASE64_RUN.finditer(blob):
        run = match.group()
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) // 4 * 4]
            for altchars in (b"+/", b"-_"):
                with contextlib.suppress(binascii.Error):  # characters of the other alphabet
                    out.append(base64.b64decode(chunk, altchars=altchars))
    return b"\n".join(out)


def hunt(blobs: dict[str, bytes], all_secrets: dict[str, str]) -> list[str]:
    wanted = needles(all_secrets)
    hits = []
    for where, blob in blobs.items():
        for how, text in (("", blob), (" (base64)", base64_decoded(blob))):
            hits += sorted({f"{label} in {where}{how}" for needle, label in wanted.items() if needle in text})
    return hits


def files(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def host_code_caches(fleet) -> dict[str, bytes]:
    """What Mitogen's interpreter on each host keeps there: the strategy's cache of compiled code."""
    found = {}
    for host in fleet.hosts:
        archive = fleet.ssh(host, "tar -C ~/.cache/fleetdeck -cf - mitogen-code | base64 -w0").stdout
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(archive))) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    found[f"{host.name}:~/.cache/fleetdeck/{member.name}"] = tar.extractfile(member).read()
    return found


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# A stand-in for host 0's app on its health URL, answering healthy with a secret in the body (argv[1]).
LEAKY_HEALTH = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(sys.argv[1].encode())
http.server.HTTPServer(("127.0.0.1", 8099), Health).serve_forever()
"""


def leaky_instance(env, fleet, store: Path) -> str:
    """Host 0 as the status probe and the backups list see it, with a secret wherever a careless page would
    show it: in its health answer, its release history and its backup manifest."""
    host = fleet.hosts[0]
    shutil.copy(fleet.known_hosts, env.inventory / "known_hosts")  # where the probe finds pinned host keys
    main = env.inventory / "host_vars" / host.name / "main.yml"
    main.write_text(main.read_text() + "app_health_url: http://127.0.0.1:8099/health\n")
    secret = env.secrets[host.name]
    answer = json.dumps({"status": "ok", "version": "1.0.0", "token": secret})
    # The hunt runs once per store on one fleet: the previous run's health server (its old secret) goes first.
    fleet.ssh(host, "systemctl stop hunt-health.service 2>/dev/null; systemctl reset-failed hunt-health.service "
                    "2>/dev/null; true")
    fleet.ssh(host, f"systemd-run --unit hunt-health python3 -c {shlex.quote(LEAKY_HEALTH)} {shlex.quote(answer)}")
    facts = json.dumps({"current": "1.0.0", "history": [{"version": "1.0.0", "from": secret, "at": "now"}]})
    fleet.ssh(host, f"mkdir -p /etc/ansible/facts.d && echo {shlex.quote(facts)} > /etc/ansible/facts.d/app.fact")
    backup = store / host.name / "20260101T000000Z"
    backup.mkdir(parents=True)
    (backup / "manifest.json").write_text(json.dumps({
        "id": backup.name, "instance": host.name, "app_version": "1.0.0", "finished_at": "2026-01-01T00:00:00Z",
        "database": secret, "parts": {"data.tar.gz": {"sha256": secret, "size": 1}}}))
    return host.name


def test_no_secret_in_anything_the_runner_writes_or_serves(runner_store, fleet, tmp_path):
    env = make_env(fleet, tmp_path, runner_store)
    all_secrets = vault_secrets(env, fleet, tmp_path / "keys")
    env.env["FLEETDECK_BACKUP_STORE"] = str(tmp_path / "store")
    leaky = leaky_instance(env, fleet, tmp_path / "store")
    hub, hook_secret, hub_secret = Hub(), secrets.token_urlsafe(33), secrets.token_urlsafe(33)
    (tmp_path / "hook-secret").write_text(hook_secret)
    env.env |= {
        "FLEETDECK_HOOK_SECRET_FILE": str(tmp_path / "hook-secret"),
        "FLEETDECK_HUB_URL": f"http://127.0.0.1:{hub.server_address[1]}/runs",
        "FLEETDECK_HUB_SECRET": hub_secret,
    }
    console_password = secrets.token_urlsafe(24)
    env.env["FLEETDECK_CONSOLE_USERS"] = json.dumps([{
        "name": "ops", "password_hash": generate_password_hash(console_password),
        "scopes": ["read", "operate", "provision"]}])
    service_secrets = {f"token {name}": token for name, token in env.tokens.items()}
    service_secrets |= {"hook secret": hook_secret, "hub secret": hub_secret, "console password": console_password}
    database = env.env.get("FLEETDECK_DATABASE_URL")
    if database:
        service_secrets["database password"] = runner_store.server.password
    all_secrets |= service_secrets | {"vault password": vault.read_password(env.password_file).decode()}
    data = Path(env.env["FLEETDECK_RUNNER_DATA_DIR"])
    env.env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def store_files() -> dict:
        """The data dir and the runs' caches, and with PostgreSQL all its database holds."""
        written = files(data) | files(tmp_path / "cache")
        return written | ({"store (pg_dump)": runner_store.server.dump(database)} if database else {})
    server = Server(env, free_port())
    session = Session(server, env.tokens)
    server.start()
    try:
        ok = session.start()
        assert session.finished(ok)["status"] == "successful"
        text = session.call("GET", f"/v1/runs/{ok}/events?limit=1000")[1].decode()
        assert "********" in text and "the key and the password" in text, "the hunt playbook did not run"

        failed = session.start(params={"hunt_fail": True})
        assert session.finished(failed)["status"] == "failed"

        checked = session.start(check=True)
        assert session.finished(checked)["status"] == "successful"
        diffs = json.loads(session.call("GET", f"/v1/runs/{checked}/events?limit=1000")[1])["events"]
        assert any(e["data"].get("res", {}).get("diff") for e in diffs), "check mode showed no diff"

        canceled = session.start(params={"hunt_sleep": 60})
        live = threading.Thread(target=session.stream, args=(canceled,))
        live.start()
        wait_until(lambda: any((e["task"] or "").startswith("Wait") for e in session.json(
            "GET", f"/v1/runs/{canceled}/events?limit=1000")["events"]))
        environments = run_environments(canceled)
        assert environments, "no process of the running run found"
        for pid, environ in environments.items():
            names = {e.split(b"=", 1)[0] for e in environ.split(b"\0") if e}
            assert not {n for n in names if n.startswith(b"FLEETDECK_RUNNER_")}, (pid, names)
            assert b"FLEETDECK_HOOK_SECRET_FILE" not in names and b"FLEETDECK_HUB_SECRET" not in names
            assert b"ANSIBLE_HOST_KEY_CHECKING=False" not in environ, "ansible.cfg checks host keys"
            leaked = [what for what, value in service_secrets.items() if value.encode() in environ]
            assert not leaked, f"process {pid} of a run has {leaked} in its environment"
        assert session.call("POST", f"/v1/runs/{canceled}/cancel")[0] == 202
        live.join(timeout=60)
        assert session.finished(canceled)["status"] == "canceled"

        killed = session.start(params={"hunt_sleep": 8})
        live = threading.Thread(target=session.stream, args=(killed,))
        live.start()
        wait_until(lambda: any((e["task"] or "").startswith("Wait") for e in session.json(
            "GET", f"/v1/runs/{killed}/events?limit=1000")["events"]))
        server.kill()
        live.join(timeout=60)
        # Left alone, ansible-playbook ends its sleep and drops the next event's raw data (the echoed
        # password) into the run directory before it finds its output gone: the restart must scrub it.
        wait_until(lambda: not run_environments(killed), timeout=60)
        assert hunt(files(data / "runs" / killed), all_secrets), "the SIGKILL left no raw event behind"
        server.start()
        assert session.finished(killed)["status"] == "interrupted"

        ping = json.dumps({"zen": "hunt", "hook_id": 1}).encode()
        status, _ = session.call("POST", "/v1/hooks/git", raw=ping, headers={
            "X-Hub-Signature-256": sign(hook_secret, ping), "X-GitHub-Delivery": "hunt-1",
            "X-GitHub-Event": "ping"})
        assert status == 200

        runs = (ok, failed, checked, canceled, killed)
        for run_id in runs:
            session.call("GET", f"/v1/runs/{run_id}")
            session.call("GET", f"/v1/runs/{run_id}/events?limit=1000")
            session.stream(run_id)
        for path in ("/v1/runs?limit=500", "/v1/instances", "/v1/actions", "/metrics", "/readyz"):
            session.call("GET", path)
        session.call("GET", f"/v1/instances/{fleet.hosts[0].name}")
        # The probe reached the app and masked what it answered; every probed field served, as JSON and pages.
        probed = wait_until(lambda: (lambda i: i if all(r["health"] for r in i) else None)(
            session.json("GET", "/v1/instances")["instances"]), timeout=60)
        health = next(r["health"] for r in probed if r["name"] == leaky)
        assert health["healthy"] and health["version"] == "1.0.0" and "token=********" in health["detail"], health
        detail = session.json("GET", f"/v1/instances/{leaky}")
        assert detail["release_history"][0]["from"] == "********", detail["release_history"]
        assert [b["id"] for b in detail["backups"]] == ["20260101T000000Z"], detail["backups"]
        # Every console page and form, signed in.
        session.sign_in("ops", console_password)
        assert b"20260101T000000Z" in session.page(f"/ui/instances/{leaky}")
        assert b"token=********" in session.page("/ui/")  # the health cell's title
        for host in fleet.hosts:
            session.page(f"/ui/instances/{host.name}")
        for run_id in runs:
            assert session.page(f"/ui/runs/{run_id}").count(run_id.encode()) >= 1
            assert b"event: end" in session.page(f"/ui/runs/{run_id}/events", stream=True)
        session.page("/ui/new")
        session.page("/ui/new", {"name": "Bad", "domain": "x", "address": fleet.hosts[0].address})
        session.page(f"/ui/instances/{fleet.hosts[0].name}/settings", {"tier": "1", "features": "", "hold": "on"})
        session.page(f"/ui/instances/{fleet.hosts[0].name}")
        # A callback for each run that ended in the service (the SIGKILLed one ended at the restart).
        wait_until(lambda: len(hub.bodies) >= len(runs) - 1, timeout=30)

        if not database:
            assert {p.name for p in data.iterdir()} >= {"runner.db", "runner.db-wal"}
        written = store_files() | host_code_caches(fleet)
        assert any(p.endswith("/command") for p in written)
        assert any("/fleetdeck/jinja-code/" in p for p in written), "the runs cached no compiled template"
        assert any(":~/.cache/fleetdeck/mitogen-code/" in p for p in written), "the hosts cached no compiled code"
        for path, blob in written.items():
            if path.endswith("/command"):
                assert "FLEETDECK_RUNNER_TOKENS" not in json.loads(blob)["env"], path
        served = {f"HTTP body {i}": body for i, body in enumerate(session.bodies)}
        served |= {f"hub callback {i}": body for i, body in enumerate(hub.bodies)}
        running_hits = hunt(written | served | {"service log": server.log.read_bytes()}, all_secrets)
        assert not running_hits, f"{len(running_hits)} leaks: {running_hits[:30]}"
    finally:
        server.stop()
        hub.shutdown()
    # After a clean stop the WAL is checkpointed into runner.db: search the store once more.
    stopped_hits = hunt(store_files(), all_secrets)
    assert not stopped_hits, f"{len(stopped_hits)} leaks: {stopped_hits[:30]}"
    assert os.path.getsize(server.log) > 0
