"""playbooks/dns.yml against a real PowerDNS (Debian's pdns-server, sqlite backend) started here; no fleet host:
the role runs on the controller. Create -> no change on re-run -> update -> remove; records it does not own
are never touched; a missing zone and a 5xx answer are clear errors with nothing applied."""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fleetdeck import vault

from tests.playbook import ansible_playbook
from tests.runner.service import free_port

ZONE = "example.test"
SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
INSTANCES = {"inst1": ("192.0.2.11", "inst1.example.test"), "inst2": ("2001:db8::12", "inst2.example.test")}


class PowerDNS:
    """pdns_server with a fresh sqlite database, its API on a free loopback port."""

    def __init__(self, workdir: Path):
        self.key = secrets.token_urlsafe(24)
        database = workdir / "pdns.sqlite3"
        with sqlite3.connect(database) as db:
            db.executescript(SCHEMA.read_text())
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(workdir / "pdns.log", "w")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            ["pdns_server", "--no-config", "--daemon=no", "--guardian=no", "--disable-syslog", "--launch=gsqlite3",
             f"--gsqlite3-database={database}", "--local-address=127.0.0.1", f"--local-port={free_port()}",
             f"--socket-dir={workdir}", "--webserver=yes", "--webserver-address=127.0.0.1",
             f"--webserver-port={port}", "--webserver-allow-from=127.0.0.0/8", "--api=yes", f"--api-key={self.key}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.request("GET", "")[0] != 200:
            assert self.proc.poll() is None and time.monotonic() < deadline, (workdir / "pdns.log").read_text()
            time.sleep(0.2)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        req = urllib.request.Request(f"{self.url}/api/v1/servers/localhost{path}", method=method,  # noqa: S310
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the local PowerDNS
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return -1, None

    def records(self) -> dict[tuple[str, str], list[str]]:
        """(name, type) -> contents of every rrset of the zone but SOA and NS."""
        status, zone = self.request("GET", f"/zones/{ZONE}.")
        assert status == 200
        return {(r["name"].rstrip("."), r["type"]): sorted(x["content"] for x in r["records"])
                for r in zone["rrsets"] if r["type"] not in ("SOA", "NS")}

    def set(self, name: str, rtype: str, contents: list[str]) -> None:
        """Write an rrset by hand, as someone other than fleetdeck would."""
        status, _ = self.request("PATCH", f"/zones/{ZONE}.", {"rrsets": [
            {"name": f"{name}.", "type": rtype, "ttl": 600, "changetype": "REPLACE",
             "records": [{"content": c, "disabled": False} for c in contents]}]})
        assert status == 204

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


class FailingChanges:
    """A proxy to the PowerDNS API that passes reads and answers every change with 503."""

    def __init__(self, target: str):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                req = urllib.request.Request(target + self.path,  # noqa: S310 - the local PowerDNS
                                             headers={"X-API-Key": self.headers["X-API-Key"]})
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                    self.answer(resp.status, resp.read())

            def do_PATCH(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.answer(503, b'{"error": "Service Unavailable: backend is being restarted"}')

            def answer(self, code, data):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def pdns(tmp_path_factory):
    if not shutil.which("pdns_server") or not SCHEMA.exists():
        pytest.fail("pdns-server and pdns-backend-sqlite3 are not installed: run scripts/setup")
    server = PowerDNS(tmp_path_factory.mktemp("pdns"))
    status, _ = server.request("POST", "/zones", {"name": f"{ZONE}.", "kind": "Native",
                                                  "nameservers": [f"ns1.{ZONE}."]})
    assert status == 201
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(pdns, tmp_path_factory):
    """An environment of two instances (one IPv4, one IPv6) whose DNS lives on the PowerDNS server; its API key
    only in the vault."""
    workdir = tmp_path_factory.mktemp("dns")
    inventory = workdir / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"fleet": {"hosts": {
        name: {"ansible_host": address, "app_domain": domain} for name, (address, domain) in INSTANCES.items()}}}}}))
    (inventory / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump({
        "dns_provider": "powerdns", "dns_api_url": pdns.url, "dns_zone": ZONE,
        "dns_api_key": "{{ vault_dns_api_key }}"}))
    password_file = workdir / "vault-pass"
    password_file.write_text(secrets.token_urlsafe(32) + "\n")
    vault.encrypt_file(inventory / "group_vars" / "all" / "vault.yml", {"vault_dns_api_key": pdns.key},
                       vault.read_password(password_file))
    return inventory, {"FLEETDECK_VAULT_PASSWORD_FILE": str(password_file),
                       "FLEETDECK_AUDIT_LOG": str(workdir / "audit.log")}


def run(env, *args, playbook="dns.yml", **extra_vars):
    inventory, variables = env
    return ansible_playbook(playbook, inventory, *args, "-e", json.dumps(extra_vars), env=variables, timeout=300)


def owned(name, owner):
    return {(name, "A" if ":" not in INSTANCES[owner][0] else "AAAA"): [INSTANCES[owner][0]],
            (f"_fleetdeck.{name}", "TXT"): [f'"fleetdeck-owner={owner}"']}


def test_records_are_created_with_their_markers_and_the_key_never_shows(pdns, env):
    pdns.set(f"mail.{ZONE}", "A", ["198.51.100.7"])  # someone else's record, never touched by any test
    preview = run(env, "--check")
    assert preview.rc == 0, preview.output
    assert preview.changed() == {"inst1": 1, "inst2": 1}
    assert pdns.records() == {(f"mail.{ZONE}", "A"): ["198.51.100.7"]}

    result = run(env)
    assert result.rc == 0, result.output
    assert result.changed() == {"inst1": 1, "inst2": 1}
    assert pdns.records() == {(f"mail.{ZONE}", "A"): ["198.51.100.7"],
                              **owned("inst1.example.test", "inst1"), **owned("api.inst1.example.test", "inst1"),
                              **owned("inst2.example.test", "inst2"), **owned("api.inst2.example.test", "inst2")}
    assert pdns.key not in preview.output + result.output
    assert pdns.key not in Path(env[1]["FLEETDECK_AUDIT_LOG"]).read_text()


def test_a_second_run_changes_nothing(pdns, env):
    before = pdns.records()
    result = run(env)
    assert result.rc == 0, result.output
    assert result.changed() == {"inst1": 0, "inst2": 0}
    assert pdns.records() == before


def test_a_new_address_and_subdomain_list_update_only_that_instance(pdns, env):
    before = pdns.records()
    result = run(env, "--limit", "inst1", dns_addresses=["192.0.2.21"], dns_subdomains=["admin"])
    assert result.rc == 0, result.output
    assert result.changed() == {"inst1": 1}
    assert pdns.records() == {**{k: v for k, v in before.items() if "inst1" not in k[0]},
                              (f"inst1.{ZONE}", "A"): ["192.0.2.21"], (f"admin.inst1.{ZONE}", "A"): ["192.0.2.21"],
                              (f"_fleetdeck.inst1.{ZONE}", "TXT"): ['"fleetdeck-owner=inst1"'],
                              (f"_fleetdeck.admin.inst1.{ZONE}", "TXT"): ['"fleetdeck-owner=inst1"']}


def test_records_it_does_not_own_are_refused_and_nothing_changes(pdns, env):
    pdns.set(f"shop.{ZONE}", "A", ["203.0.113.5"])  # made by hand: no marker
    before = pdns.records()
    result = run(env, "--limit", "inst1", dns_name=f"shop.{ZONE}")
    assert result.rc != 0
    assert (f"zone {ZONE}: refusing to touch records fleetdeck does not own for inst1: shop.{ZONE} A exists and is "
            f"not owned by fleetdeck (no _fleetdeck.shop.{ZONE} TXT marker)") in result.output, result.output
    assert pdns.records() == before

    result = run(env, "--limit", "inst1", dns_name=f"inst2.{ZONE}")
    assert result.rc != 0
    assert f"inst2.{ZONE} is owned by inst2" in result.output, result.output
    assert pdns.records() == before


def test_a_missing_zone_is_a_clear_error(pdns, env):
    before = pdns.records()
    result = run(env, dns_zone="missing.test")
    assert result.rc != 0
    assert "zone missing.test does not exist on the PowerDNS server" in result.output, result.output
    assert pdns.records() == before


def test_a_provider_answering_5xx_is_a_clear_error_and_nothing_is_applied(pdns, env):
    proxy = FailingChanges(pdns.url)
    before = pdns.records()
    try:
        result = run(env, "--limit", "inst2", dns_api_url=proxy.url, dns_subdomains=["api", "www"])
    finally:
        proxy.close()
    assert result.rc != 0
    assert (f"zone {ZONE}: PowerDNS answered HTTP 503 to the change, which it applies all or nothing "
            "(Service Unavailable: backend is being restarted)") in result.output, result.output
    assert pdns.records() == before


def test_a_change_powerdns_rejects_is_applied_not_even_in_part(pdns, env):
    pdns.set(f"cdn.inst2.{ZONE}", "CNAME", [f"edge.{ZONE}."])  # an A record cannot join a CNAME
    before = pdns.records()
    result = run(env, "--limit", "inst2", dns_subdomains=["api", "www", "cdn"])
    assert result.rc != 0
    assert f"zone {ZONE}: PowerDNS answered HTTP 422 to the change" in result.output, result.output
    assert pdns.records() == before  # neither www nor any marker


def test_remove_deletes_only_the_instances_records(pdns, env, tmp_path):
    playbook = tmp_path / "remove.yml"  # the step decommission.yml runs under the instance lock
    decommission = yaml.safe_load((Path(__file__).parents[1] / "playbooks" / "decommission.yml").read_text())
    assert {"role": "dns", "tasks_from": "remove"} in decommission[0]["roles"][0]["instance_lock_work"]
    playbook.write_text(yaml.safe_dump([{"name": "Remove DNS", "hosts": "fleet", "gather_facts": False, "tasks": [
        {"name": "Remove", "ansible.builtin.include_role": {"name": "dns", "tasks_from": "remove"}}]}]))
    before = pdns.records()
    result = run(env, "--limit", "inst2", playbook=str(playbook))
    assert result.rc == 0, result.output
    assert result.changed() == {"inst2": 1}
    gone = {f"inst2.{ZONE}", f"api.inst2.{ZONE}", f"_fleetdeck.inst2.{ZONE}", f"_fleetdeck.api.inst2.{ZONE}"}
    assert gone <= {name for name, _ in before}
    assert pdns.records() == {k: v for k, v in before.items() if k[0] not in gone}  # cdn.inst2's CNAME stays
    assert run(env, "--limit", "inst2", playbook=str(playbook)).changed() == {"inst2": 0}
