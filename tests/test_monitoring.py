"""Fleet observability and canary analysis on real hosts: 1 central server + 3 instances.

The central server runs VictoriaMetrics behind nginx (TLS, bearer tokens), vmalert, Alertmanager and
vmagent probing every instance; each instance runs node exporter, a blackbox probe exporter and a
local Prometheus that remote_writes (tier 2 only). inst1 (the canary) and inst2 (ring early, by its customer
label) are tier 2, inst3 (the rest) tier 1 until the monitoring tests promote it. The canary-analysis tests then
judge each soaked ring from PromQL against the instances still on the old release. Soaks are seconds long:
3 intervals of 6 s, read 8 s after each ends. One fleet for both: they need the same four hosts and setup.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import leftover_workers

from tests.deployment import Deployment
from tests.playbook import REPO, ansible_playbook

FLEET_SIZE = 4  # inst1 (canary), inst2 (ring early), inst3 (rest), central1
CENTRAL_ROLE = REPO / "roles" / "central"
DASHBOARDS = sorted((CENTRAL_ROLE / "files" / "dashboards").glob("*.json"))
TIER2 = ("inst1", "inst2")
TIER1 = ("inst3",)
# What the test hosts need beyond the role defaults: short intervals so alerts fire within seconds.
TEST_VARS = {
    "monitoring_scrape_interval": "2s",
    "central_scrape_interval": "3s",
    "central_vmalert_evaluation_interval": "3s",
    "central_alert_for": {"FleetdeckInstanceDown": "6s"},
    "central_alertmanager_group_wait": "1s",
    "central_alertmanager_group_interval": "3s",
    "central_alert_webhook_url": "http://127.0.0.1:9/fleetdeck-alerts",
    "central_alert_email_to": "ops@example.test",
    "central_vm_retention": "30d",
    # New samples reach the tests' queries and the alert rules after 2 s instead of 30 s.
    "central_vm_latency_offset": "2s",
    # The test hosts cannot create user namespaces (Debian's prometheus.service has PrivateUsers=yes).
    "monitoring_prometheus_private_users": False,
}
RINGS = {"rollout_rings": [{"name": "early", "labels": {"channel": "early"}}]}
# What the backup role writes to the textfile collector (simulated here: that role is separate).
BACKUP_PROM = """\
# HELP refapp_backup_last_success_timestamp_seconds End of the last successful backup.
# TYPE refapp_backup_last_success_timestamp_seconds gauge
refapp_backup_last_success_timestamp_seconds {now}
# HELP refapp_backup_size_bytes Size of the last successful backup.
# TYPE refapp_backup_size_bytes gauge
refapp_backup_size_bytes 12345
"""


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: scripts/setup installs the prometheus package")
    return path


# --- remote_write by hand: a protobuf WriteRequest in a literal-only snappy block ------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_request(labels: dict[str, str], value: float) -> bytes:
    """Snappy-compressed prompb.WriteRequest with one series and one sample at now."""
    series = b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels.items()))
    sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(int(time.time() * 1000))
    raw = _field(1, series + _field(2, sample))
    block = bytearray(_varint(len(raw)))
    for start in range(0, len(raw), 65536):
        chunk = raw[start:start + 65536]
        block += bytes([61 << 2]) + struct.pack("<H", len(chunk) - 1) + chunk
    return bytes(block)


class Monitoring:
    def __init__(self, fleet, deployment: Deployment):
        self.fleet = fleet
        self.deployment = deployment
        self.central = fleet.hosts[3]
        self.tokens = {name: secrets.token_urlsafe(32) for name in deployment.instances}

    def playbook(self, name: str, *args: str):
        return self.deployment.playbook(name, *args)

    def central_sh(self, command: str) -> str:
        return self.fleet.ssh(self.central, command).stdout

    def vm_query(self, query: str) -> list[dict]:
        out = self.central_sh(f"curl -sf --get http://127.0.0.1:8428/api/v1/query "
                              f"--data-urlencode 'query={query}'")
        return json.loads(out)["data"]["result"]

    def vm_export(self, match: str) -> list[dict]:
        """Raw stored series (no query lookback or latency offset), after flushing VictoriaMetrics' buffers."""
        out = self.central_sh(f"curl -sf http://127.0.0.1:8428/internal/force_flush >/dev/null; "
                              f"curl -sf --get http://127.0.0.1:8428/api/v1/export --data-urlencode 'match[]={match}'")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def alerts(self, name: str) -> list[dict]:
        out = self.central_sh("curl -sf http://127.0.0.1:9093/api/v2/alerts")
        return [a for a in json.loads(out) if a["labels"].get("alertname") == name]

    def remote_write(self, body: bytes, authorization: str | None) -> int:
        request = urllib.request.Request(f"https://{self.central.address}:8443/api/v1/write", data=body,
                                         method="POST", headers={"Content-Encoding": "snappy",
                                                                 "Content-Type": "application/x-protobuf",
                                                                 "X-Prometheus-Remote-Write-Version": "0.1.0"})
        if authorization is not None:
            request.add_header("Authorization", authorization)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310 - https
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    @property
    def ca_file(self) -> Path:
        path = self.deployment.inventory.parent / "central-ca.pem"
        if not path.exists():
            path.write_text(self.central_sh("cat /etc/fleetdeck/central/tls/central.crt"))
        return path


def wait_for(what: str, check, timeout: float = 60.0, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def mon(fleet, tmp_path_factory):
    """Instances deployed (deploy.yml) while the central server is set up (central.yml), then monitoring.yml;
    inst1 is the canary and inst2 has the customer label channel=early, which puts it in the ring early."""
    instance_fleet = copy.copy(fleet)
    instance_fleet.hosts = fleet.hosts[:3]
    deployment = Deployment.create(instance_fleet, tmp_path_factory.mktemp("monitoring"), canary=1, tier2=(0, 1))
    monitoring = Monitoring(fleet, deployment)
    inventory = deployment.inventory
    central = monitoring.central
    deployment.add_central(central.address, fleet)
    # The remote_write tokens: per instance, as vault_monitoring_remote_write_token (see docs/monitoring.md).
    for name, token in monitoring.tokens.items():
        (inventory / "host_vars" / name / "monitoring.yml").write_text(
            yaml.safe_dump({"vault_monitoring_remote_write_token": token}))
    (inventory / "group_vars" / "all" / "monitoring_test.yml").write_text(yaml.safe_dump(TEST_VARS))
    (inventory / "group_vars" / "all" / "rings.yml").write_text(yaml.safe_dump(RINGS))
    edit_host_vars(deployment, "inst2", "fleetdeck_labels: {channel: early}\n")

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        deploy = pool.submit(deployment.playbook, "deploy.yml")
        central_run = pool.submit(monitoring.playbook, "central.yml")
        deploy_result, central_result = deploy.result(), central_run.result()
    assert deploy_result.rc == 0, deploy_result.output
    assert central_result.rc == 0, central_result.output
    monitoring.first_central = central_result
    now = int(time.time())
    deployment.on("inst1", f"printf '{BACKUP_PROM.format(now=now)}' > "
                           "/var/lib/prometheus/node-exporter/refapp_backup.prom")
    result = monitoring.playbook("monitoring.yml")
    assert result.rc == 0, result.output
    monitoring.setup_seconds = time.monotonic() - started
    print(f"\nsetup (deploy || central, then monitoring): {monitoring.setup_seconds:.0f}s")
    return monitoring


# --- rules and dashboards, no fleet needed ---------------------------------------------------------

def test_promtool_checks_the_alert_rules():
    rules = CENTRAL_ROLE / "files" / "rules" / "fleetdeck.rules.yml"
    proc = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {"FleetdeckInstanceDown", "FleetdeckHighErrorRate", "FleetdeckBackupStale",
                           "FleetdeckBackupOffsiteFailing", "FleetdeckBackupOffsiteStale",
                           "FleetdeckRestoreDrillFailing", "FleetdeckRestoreDrillStale",
                           "FleetdeckDiskSpaceLow", "FleetdeckMemoryHigh", "FleetdeckCertificateExpiring",
                           "FleetdeckUnexpectedVersion"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert len(rule["annotations"]["description"]) > 60 and rule["annotations"]["summary"], name


def test_promtool_unit_tests_of_the_alert_rules():
    tests = sorted((CENTRAL_ROLE / "files" / "tests").glob("*.test.yml"))
    assert [path.name for path in tests] == ["fleetdeck.rules.days.test.yml", "fleetdeck.rules.test.yml"]
    proc = subprocess.run([promtool(), "test", "rules", *(path.name for path in tests)], cwd=tests[0].parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {t["alertname"] for path in tests for case in yaml.safe_load(path.read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert len(tested) == 11


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "bool", "offset", "le", "inf", "nan", "time", "vector"}


def metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (label matchers, groupings and functions removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_dashboards_are_valid_grafana_json():
    assert [d.name for d in DASHBOARDS] == ["backups.json", "fleet-overview.json", "instance.json"]
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] and dashboard["uid"] not in uids and dashboard["panels"]
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "fleetdeck-vm" and panel["targets"], (path.name, panel["title"])
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    instance = json.loads((CENTRAL_ROLE / "files" / "dashboards" / "instance.json").read_text())
    assert [v["name"] for v in instance["templating"]["list"]] == ["instance"]
    assert all('instance="$instance"' in t["expr"] for p in instance["panels"] for t in p["targets"])


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{x="y"}[5m])))') == {"a_bucket"}
    assert metric_names('1 - b{instance="$instance"} / c') == {"b", "c"}
    assert metric_names("label_values(refapp_build_info, instance)") == {"refapp_build_info", "instance"}


# --- the running fleet -----------------------------------------------------------------------------

def test_central_stores_tier2_metrics_by_instance_and_nothing_from_tier1(mon):
    def tier2_everything():
        found = {r["metric"]["instance"] for r in mon.vm_query("refapp_build_info")}
        node = {r["metric"]["instance"] for r in mon.vm_query("node_memory_MemTotal_bytes")}
        return found == set(TIER2) and node == set(TIER2) and found
    wait_for("tier-2 metrics in VictoriaMetrics", tier2_everything, timeout=60)
    for name in TIER2:
        series = mon.vm_query(f'refapp_http_requests_total{{instance="{name}"}}')
        assert series and all(s["metric"]["job"] == "refapp" for s in series), series
    # Only the central server's probe knows about the tier-1 instance.
    assert mon.vm_query(f'{{instance="{TIER1[0]}", job!="fleet_probe"}}') == []
    assert mon.vm_query(f'count({{instance="{TIER1[0]}"}}) by (job)')[0]["metric"] == {"job": "fleet_probe"}
    # The backup role's textfile metrics travel too.
    wait_for("backup metrics", lambda: mon.vm_query('refapp_backup_size_bytes{instance="inst1"}'), timeout=30)


def test_every_instance_is_probed_from_the_central_server(mon):
    def probes():
        results = {r["metric"]["instance"]: r["value"][1] for r in mon.vm_query('probe_success{job="fleet_probe"}')}
        return results if results == dict.fromkeys(("inst1", "inst2", "inst3"), "1") else None
    wait_for("probe_success=1 for every instance", probes, timeout=30)


def test_compliance_sees_central_samples_of_tier2_instances_only(mon, tmp_path):
    result = mon.playbook("compliance.yml", "-e", f"compliance_report_dir={tmp_path}")
    assert result.rc == 0, result.output
    [report] = tmp_path.glob("compliance-*.json")
    central = {host: next(c for c in checks if c["check"] == "central monitoring")
               for host, checks in json.loads(report.read_text())["instances"].items()}
    for name in TIER2:
        assert central[name]["status"] == "pass", central
        assert re.fullmatch(r"tier 2: newest sample on central1 is \d+ s old \(limit 300 s\)",
                            central[name]["reason"]), central
    assert central["inst3"] == {"check": "central monitoring", "status": "pass",
                                "reason": "tier 1: local monitoring only, nothing is sent to central1"}


def test_remote_write_needs_a_valid_token(mon):
    stamp = secrets.token_hex(4)
    valid = mon.tokens["inst2"]
    for case, authorization in (("missing", None), ("wrong", f"Bearer {secrets.token_urlsafe(32)}"),
                                ("prefix", f"Bearer {valid[:-1]}"), ("longer", f"Bearer {valid}x"),
                                ("basic", f"Basic {valid}")):
        body = write_request({"__name__": f"fleetdeck_test_{case}_{stamp}", "instance": "inst1"}, 1)
        assert mon.remote_write(body, authorization) == 401, case
    # A valid token is accepted, and its series get its own instance label whatever they claim.
    body = write_request({"__name__": f"fleetdeck_test_valid_{stamp}", "instance": "inst1"}, 7)
    assert mon.remote_write(body, f"Bearer {valid}") == 204
    found = wait_for("the accepted sample", lambda: mon.vm_export(f'{{__name__=~"fleetdeck_test_.*_{stamp}"}}'),
                     timeout=30)
    assert [(r["metric"]["__name__"], r["metric"]["instance"], r["values"]) for r in found] == \
        [(f"fleetdeck_test_valid_{stamp}", "inst2", [7])]
    # Plain HTTP is not served.
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"http://{mon.central.address}:8443/api/v1/write", timeout=5)
    assert plain.value.code == 400


def test_stopping_the_app_fires_instance_down_and_it_resolves(mon):
    deployment = mon.deployment
    deployment.on("inst3", "systemctl stop refapp")
    try:
        started = time.monotonic()
        firing = wait_for("FleetdeckInstanceDown for inst3", lambda: [
            a for a in mon.alerts("FleetdeckInstanceDown")
            if a["labels"]["instance"] == "inst3" and a["status"]["state"] == "active"], timeout=90)
        print(f"\nalert active in Alertmanager after {time.monotonic() - started:.0f}s")
        assert firing[0]["labels"]["severity"] == "critical"
        assert "inst3" in firing[0]["annotations"]["description"]
        assert {r["name"] for r in firing[0]["receivers"]} == {"webhook", "email"}
        assert [a["labels"]["instance"] for a in mon.alerts("FleetdeckInstanceDown")] == ["inst3"]
    finally:
        deployment.on("inst3", "systemctl start refapp")
    started = time.monotonic()
    wait_for("the alert to resolve", lambda: not [
        a for a in mon.alerts("FleetdeckInstanceDown") if a["labels"]["instance"] == "inst3"], timeout=90)
    print(f"resolved after {time.monotonic() - started:.0f}s")


def test_dashboards_reference_only_metrics_the_fleet_exports(mon):
    exported = set(json.loads(mon.central_sh(
        "curl -sf http://127.0.0.1:8428/api/v1/label/__name__/values"))["data"])
    used = set()
    for path in DASHBOARDS:
        for expr in dashboard_exprs(json.loads(path.read_text())):
            used |= metric_names(expr) - {"instance"}
    assert used, "no metric found in the dashboards"
    assert used <= exported, f"not exported by the fleet: {sorted(used - exported)}"
    # What the central server serves Grafana: the same dashboards and a data source on VictoriaMetrics.
    for path in DASHBOARDS:
        remote = mon.central_sh(f"cat /var/lib/grafana/dashboards/fleetdeck/{path.name}")
        assert json.loads(remote) == json.loads(path.read_text())
    datasources = yaml.safe_load(mon.central_sh("cat /etc/grafana/provisioning/datasources/fleetdeck.yml"))
    assert datasources["datasources"][0]["url"] == "http://127.0.0.1:8428"
    assert datasources["datasources"][0]["uid"] == "fleetdeck-vm"
    providers = yaml.safe_load(mon.central_sh("cat /etc/grafana/provisioning/dashboards/fleetdeck.yml"))
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/fleetdeck"


def test_second_runs_change_nothing(mon):
    with ThreadPoolExecutor(2) as pool:
        central_run = pool.submit(mon.playbook, "central.yml")
        monitoring_run = pool.submit(mon.playbook, "monitoring.yml")
        central, monitoring = central_run.result(), monitoring_run.result()
    assert central.rc == 0 and monitoring.rc == 0, central.output + monitoring.output
    assert central.changed() == {"central1": 0}, central.output
    assert monitoring.changed() == dict.fromkeys(("inst1", "inst2", "inst3"), 0), monitoring.output


def promote_inst3(mon):
    """inst3 to tier 2: one line in its host_vars, then monitoring.yml on it (once)."""
    host_vars = mon.deployment.inventory / "host_vars" / "inst3" / "main.yml"
    if "fleetdeck_tier: 1" in host_vars.read_text():
        host_vars.write_text(host_vars.read_text().replace("fleetdeck_tier: 1", "fleetdeck_tier: 2"))
        result = mon.playbook("monitoring.yml", "--limit", "inst3")
        assert result.rc == 0, result.output
    wait_for("inst3's metrics in VictoriaMetrics",
             lambda: mon.vm_query('refapp_build_info{instance="inst3"}'), timeout=45)


def test_promoting_an_instance_to_tier2_is_one_line_and_this_playbook(mon):
    promote_inst3(mon)


def test_the_playbooks_are_plain_ansible(repo):
    env = {"FLEETDECK_VAULT_PASSWORD_FILE": str(repo / "inventory/example/EXAMPLE-VAULT-PASSWORD")}
    for name in ("monitoring.yml", "central.yml"):
        result = ansible_playbook(name, repo / "inventory" / "example", "--syntax-check", env=env)
        assert result.rc == 0, result.output


# --- canary analysis against peers, on the same fleet (every instance tier 2) -----------------------

ANALYSIS = ("-e", "rollout_soak_seconds=1", "-e", "rollout_soak_interval=1", "-e", "app_health_retries=15",
            "-e", "rollout_analysis_interval=6", "-e", "rollout_analysis_intervals=3",
            "-e", "rollout_analysis_delay=8", "-e", "rollout_analysis_min_requests=10",
            # Latency on this shared 2-core machine swings widely: judged loosely, errors strictly.
            "-e", "rollout_analysis_max_latency=10", "-e", "rollout_analysis_latency_ratio=20",
            "-e", "rollout_analysis_pause_timeout=30")
OWED_FACT = "/etc/ansible/facts.d/fleetdeck_rollback_owed.fact"
# One API client per instance, about 8 requests per 2 s: twice the 4 at which refapp 1.3.0 starts failing, and
# light enough to leave the shared CI cores to the playbooks.
LOAD = """
import sys, time, urllib.request
token, until = sys.argv[1], time.time() + float(sys.argv[2])
def work():
    while time.time() < until:
        request = urllib.request.Request("http://127.0.0.1:8080/items", headers={"Authorization": "Bearer " + token})
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except Exception:
            pass
        time.sleep(0.2)
work()
"""


@pytest.fixture(scope="module")
def deployment(mon):
    """mon's instances on 1.0.0, all tier 2 (inst3 promoted), monitored by central1."""
    promote_inst3(mon)
    return mon.deployment


@contextlib.contextmanager
def load(deployment):
    """API traffic on every instance, from a process on the instance itself, while in the block."""
    for name in deployment.instances:
        token = deployment.secrets(name)["vault_app_api_token"]
        deployment.on(name, f"systemd-run --unit=test-load --collect --quiet python3 -c {shlex.quote(LOAD)} "
                            f"{shlex.quote(token)} 600")
    try:
        yield
    finally:
        for name in deployment.instances:
            deployment.on(name, "systemctl stop test-load", check=False)


def canary_upgrade(deployment, version, *args):
    with load(deployment):
        return deployment.playbook("canary_upgrade.yml", "-e", f"app_version={version}",
                                   "-e", "upgrade_batches=100%", *ANALYSIS, *args)


def decision_block(output, instance="inst1"):
    """The decision as printed by 'Show the canary decision'."""
    start = output.index(f"canary analysis of {instance}")
    return output[start:output.index("TASK [", start)]


def audit_lines(deployment):
    return list(map(json.loads, Path(deployment.env["FLEETDECK_AUDIT_LOG"]).read_text().splitlines()))


def audit(deployment, event, since=0):
    """The audit log's lines of one event, from line number `since` on (len(audit_lines()) before a run)."""
    return [line for line in audit_lines(deployment)[since:] if line["event"] == event]


def edit_host_vars(deployment, instance, add="", remove=""):
    host_vars = deployment.inventory / "host_vars" / instance / "main.yml"
    host_vars.write_text(host_vars.read_text().replace(remove, "") + add)


def summary(result, playbook):
    return result.output.split(f"FLEETDECK SUMMARY ({playbook})", 1)[1]


def versions(deployment):
    return {name: deployment.health(name)["version"] for name in deployment.instances}


def test_a_release_failing_under_load_fails_against_its_peers_though_healthy(deployment, alerts):
    mark = len(audit_lines(deployment))
    result = canary_upgrade(deployment, "1.3.0", *alerts.args)
    assert result.rc != 0
    shown = decision_block(result.output)
    print(shown)
    assert "canary analysis of inst1 (1.3.0) against inst2, inst3 (1.0.0) on central1" in shown
    assert "decision: FAIL" in shown and "error rate" in shown
    # Its health never failed: the soak passed, the analysis stopped it.
    assert "canary unhealthy" not in result.output
    assert "upgrade to 1.3.0 failed (canary analysis: fail" in result.output
    assert "rolled back to 1.0.0" in result.output
    assert versions(deployment) == dict.fromkeys(deployment.instances, "1.0.0")
    (line,) = audit(deployment, "analysis", mark)
    assert (line["instance"], line["version"], line["ring"]) == ("inst1", "1.3.0", "canary")
    assert line["decision"] == "fail" and line["baseline_instances"] == ["inst2", "inst3"]
    assert line["intervals"][0]["canary"]["error_rate"] > 0.05
    # The later rings never started.
    assert [(batch["ring"], batch["instances"]) for batch in audit(deployment, "batch", mark)] == [
        ("canary", ["inst1"])]
    shown = summary(result, "canary_upgrade.yml")
    assert "inst1                canary       failed       1.0.0" in shown, shown
    assert "inst2                early        not started  -            unchanged" in shown
    assert "inst3                rest         not started  -            unchanged" in shown
    # The alert carries the decision and the numbers behind it.
    (alert,) = alerts.received
    assert alert["valid"] and alert["body"]["event"] == "rollout_failed" and alert["body"]["ring"] == "canary"
    assert alert["body"]["analysis"] == {key: line[key] for key in ("decision", "reason", "baseline_instances",
                                                                    "intervals")}


def test_a_healthy_release_passes_ring_by_ring_in_order(deployment):
    mark = len(audit_lines(deployment))
    result = canary_upgrade(deployment, "1.4.0")
    assert result.rc == 0, result.output
    assert "decision: PASS" in decision_block(result.output)
    # The ring early is judged against the rest, the instances still on the old release.
    shown = decision_block(result.output, "inst2")
    print(shown)
    assert "canary analysis of inst2 (1.4.0) against inst3 (1.0.0) on central1" in shown
    assert "decision: PASS" in shown
    assert "release rings, in order (batches 1, 1, 1)" in result.output
    assert all(ring in result.output for ring in ("canary: inst1", "early: inst2", "rest: inst3"))
    assert versions(deployment) == dict.fromkeys(deployment.instances, "1.4.0")
    assert [(batch["ring"], batch["instances"]) for batch in audit(deployment, "batch", mark)] == [
        ("canary", ["inst1"]), ("early", ["inst2"]), ("rest", ["inst3"])]
    lines = audit_lines(deployment)[mark:]
    order = [(line["event"], line["instance"]) for line in lines if line["event"] in ("locked", "analysis")]
    assert order == [("locked", "inst1"), ("analysis", "inst1"), ("locked", "inst2"), ("analysis", "inst2"),
                     ("locked", "inst3")]  # each ring judged before the next one starts; the rest is not soaked
    analysis = {line["instance"]: line for line in audit(deployment, "analysis", mark)}
    assert {name: (line["ring"], line["decision"]) for name, line in analysis.items()} == {
        "inst1": ("canary", "pass"), "inst2": ("early", "pass")}
    assert analysis["inst1"]["intervals"][0]["baseline"]["requests"] >= 10
    assert analysis["inst2"]["baseline_instances"] == ["inst3"]
    shown = summary(result, "canary_upgrade.yml")
    for row in ("inst1                canary       changed      1.0.0        1.4.0",
                "inst2                early        changed      1.0.0        1.4.0",
                "inst3                rest         changed      1.0.0        1.4.0"):
        assert row in shown, shown


def test_too_few_samples_pause_until_promoted(deployment, alerts):
    run = deployment.start("canary_upgrade.yml", "-e", "app_version=1.1.0", "-e", "upgrade_batches=100%",
                           *ANALYSIS, "-e", "rollout_analysis_pause_timeout=120",  # the later -e wins
                           "-e", '{"rollout_rings": []}', *alerts.args)  # the canary only
    decided = threading.Event()

    def promote():  # once the analysis has ended (its audit line), as an operator would
        while not decided.is_set():
            if any(a["version"] == "1.1.0" for a in audit(deployment, "analysis")):
                decision = deployment.playbook("canary_decision.yml", "--limit", "inst1",
                                               "-e", "canary_decision=promote")
                assert decision.rc == 0, decision.output
                return
            time.sleep(1)

    helper = threading.Thread(target=promote)
    helper.start()
    result = deployment.playbook_finished(run)
    decided.set()
    helper.join()
    assert result.rc == 0, result.output
    assert "decision: INCONCLUSIVE" in decision_block(result.output)
    assert "canary inst1: promote (canary_decision)" in result.output
    assert versions(deployment) == dict.fromkeys(deployment.instances, "1.1.0")
    # The pause alerted, with the numbers behind it, and so did the decision.
    assert [(a["valid"], a["body"]["event"]) for a in alerts.received] == [(True, "canary_paused"),
                                                                           (True, "canary_decided")]
    paused, decided = (a["body"] for a in alerts.received)
    assert paused["analysis"]["decision"] == "inconclusive" and len(paused["analysis"]["intervals"]) == 3
    assert "waiting up to 120s for canary_decision" in paused["reason"]
    assert decided["reason"] == "promote (canary_decision)" and decided["rolled_back_to"] is None


def test_a_canary_cut_off_mid_soak_is_rolled_back_by_the_next_run(deployment):
    owed = Path(deployment.env["FLEETDECK_AUDIT_LOG"]).parent / "rollback-owed" / "inst1.json"
    before = versions(deployment)["inst1"]
    run = deployment.start("canary_upgrade.yml", "-e", "app_version=1.4.0", *ANALYSIS,
                           "-e", "rollout_soak_seconds=10")
    command = Path(f"/proc/{run.pid}/cmdline").read_bytes()
    deadline = time.monotonic() + 300
    while not (owed.exists() and deployment.on("inst1", f"test -e {OWED_FACT} && echo yes", check=False).strip()):
        assert time.monotonic() < deadline and run.poll() is None, "the canary never started its soak"
        time.sleep(0.5)
    run.send_signal(signal.SIGKILL)  # the controller dies mid-soak
    run.communicate(timeout=30)
    assert json.loads(owed.read_text())["rollback_to"] == before
    assert json.loads(deployment.on("inst1", f"cat {OWED_FACT}"))["version"] == "1.4.0"
    assert deployment.health("inst1")["version"] == "1.4.0"

    smoke = deployment.playbook("smoke_check.yml", "--limit", "fleet")
    assert f"inst1: owes a rollback to {before} (its soak on 1.4.0 never ended)" in smoke.output, smoke.output

    for worker in leftover_workers(command):  # the whole controller died: its task workers too
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker), signal.SIGKILL)
    rollback = deployment.playbook("rollback.yml", "--limit", "inst1")
    assert rollback.rc == 0, rollback.output
    assert "inst1: took over the lock of " in rollback.output
    assert f"inst1 owes a rollback to {before}" in rollback.output
    assert deployment.health("inst1")["version"] == before
    assert not owed.exists()
    assert Path(OWED_FACT).name not in deployment.on("inst1", "ls /etc/ansible/facts.d/").split()
    assert deployment.on("inst1", "test -e /var/lib/fleetdeck/lock.json || echo free").strip() == "free"
    (took_over,) = [line for line in audit(deployment, "locked") if line["took_over"]]
    assert took_over["instance"] == "inst1" and f"/{run.pid}/" in took_over["took_over"]["run"]


HOLD = 'rollout_hold: true\nrollout_hold_reason: "{}"\n'


def test_held_instances_are_never_touched_by_upgrades_or_rollbacks(deployment):
    edit_host_vars(deployment, "inst2", HOLD.format("customer freeze"))
    before, held = deployment.main_pid("inst2"), versions(deployment)["inst2"]
    result = deployment.playbook("upgrade.yml", "-e", "app_version=1.4.0", "-e", '{"upgrade_batches": [1, 1]}',
                                 "-e", "app_health_retries=15")
    assert result.rc == 0, result.output
    shown = summary(result, "upgrade.yml")
    assert f"inst2                held         {held:<12} {held} (held: customer freeze)" in shown, shown
    assert versions(deployment) == {"inst1": "1.4.0", "inst2": held, "inst3": "1.4.0"}

    rollback = deployment.playbook("rollback.yml")
    assert rollback.rc == 0, rollback.output
    shown = summary(rollback, "rollback.yml")
    assert f"inst2                held         {held:<12} {held} (held: customer freeze)" in shown, shown
    assert "inst1                changed      1.4.0        1.1.0" in shown
    assert versions(deployment) == dict.fromkeys(deployment.instances, held)
    assert deployment.main_pid("inst2") == before
    smoke = deployment.playbook("smoke_check.yml", "--limit", "fleet")
    assert "inst2: held on its release (customer freeze)" in smoke.output


def test_a_failing_ring_stops_the_later_rings_and_a_held_canary_is_skipped(deployment, alerts):
    """The canary is held this time: the ring early is the first upgraded, fails its analysis against its peers
    and is rolled back; the rest never starts."""
    edit_host_vars(deployment, "inst2", remove=HOLD.format("customer freeze"))
    edit_host_vars(deployment, "inst1", HOLD.format("canary on vacation"))
    before = {name: deployment.main_pid(name) for name in ("inst1", "inst3")}
    mark = len(audit_lines(deployment))
    result = canary_upgrade(deployment, "1.3.0", *alerts.args)
    assert result.rc != 0
    shown = decision_block(result.output, "inst2")
    print(shown)
    assert "canary analysis of inst2 (1.3.0) against inst1, inst3 (1.1.0) on central1" in shown
    assert "decision: FAIL" in shown
    assert "inst2: upgrade to 1.3.0 failed (canary analysis: fail" in result.output
    assert versions(deployment) == dict.fromkeys(deployment.instances, "1.1.0")
    assert {name: deployment.main_pid(name) for name in ("inst1", "inst3")} == before
    assert [(batch["ring"], batch["instances"]) for batch in audit(deployment, "batch", mark)] == [
        ("canary", ["inst1"]), ("early", ["inst2"])]
    assert [line["instance"] for line in audit(deployment, "locked", mark)] == ["inst2"]
    shown = summary(result, "canary_upgrade.yml")
    for row in ("inst1                canary       held         1.1.0        1.1.0 (held: canary on vacation)",
                "inst2                early        failed       1.1.0        1.1.0",
                "inst3                rest         not started  -            unchanged"):
        assert row in shown, shown
    (alert,) = alerts.received
    assert (alert["body"]["instance"], alert["body"]["ring"], alert["body"]["analysis"]["decision"]) == (
        "inst2", "early", "fail")
