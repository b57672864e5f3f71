"""Canary analysis against peers and release rings on real hosts: inst1 (canary), inst2 (ring early, by its
customer label) and inst3 (the rest) remote_write to a central VictoriaMetrics (central.yml), and each soaked
ring is judged from PromQL against the instances still on the old release. Soaks are seconds long: 3 intervals
of 6 s, read 8 s after each ends.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shlex
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import leftover_workers

from tests.deployment import Deployment

FLEET_SIZE = 4  # inst1 (canary), inst2 (ring early), inst3 (rest), central1
TEST_VARS = {
    "monitoring_scrape_interval": "2s",
    "central_scrape_interval": "3s",
    "monitoring_prometheus_private_users": False,  # the test hosts cannot create user namespaces
}
RINGS = {"rollout_rings": [{"name": "early", "labels": {"channel": "early"}}]}
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
def deployment(fleet, tmp_path_factory):
    """inst1 (canary), inst2 and inst3 on 1.0.0, all tier 2, deployed while central1 is set up, then monitored;
    inst2 has the customer label channel=early, which puts it in the ring early."""
    instances = copy.copy(fleet)
    instances.hosts = fleet.hosts[:3]
    deployment = Deployment.create(instances, tmp_path_factory.mktemp("analysis"), canary=1, tier2=(0, 1, 2))
    central = fleet.hosts[3]
    inventory = deployment.inventory
    deployment.add_central(central.address, fleet)
    for name in deployment.instances:
        (inventory / "host_vars" / name / "monitoring.yml").write_text(
            yaml.safe_dump({"vault_monitoring_remote_write_token": f"test-token-{name}-0123456789abcdef"}))
    (inventory / "group_vars" / "all" / "monitoring_test.yml").write_text(yaml.safe_dump(TEST_VARS))
    (inventory / "group_vars" / "all" / "rings.yml").write_text(yaml.safe_dump(RINGS))
    edit_host_vars(deployment, "inst2", "fleetdeck_labels: {channel: early}\n")
    with ThreadPoolExecutor(2) as pool:
        deploy = pool.submit(deployment.playbook, "deploy.yml", "--skip-tags", "common")
        central_run = pool.submit(deployment.playbook, "central.yml")
        for result in (deploy.result(), central_run.result()):
            assert result.rc == 0, result.output
    result = deployment.playbook("monitoring.yml")
    assert result.rc == 0, result.output
    deployment.central = central
    return deployment


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
