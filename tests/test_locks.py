"""The instance lock and the audit log when runs collide or the controller dies, on 2 hosts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import leftover_workers

from tests.deployment import Deployment

FLEET_SIZE = 2
FAST = ("-e", "rollout_soak_seconds=3", "-e", "rollout_soak_interval=1", "-e", "app_health_retries=15")
# A first run that keeps the lock a while after installing (a canary-style soak).
SOAKING = ("-e", '{"rollout_soak": true, "rollout_analysis": false}', "-e", "rollout_soak_seconds=25",
           "-e", "rollout_soak_interval=2", "-e", "app_health_retries=15")


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    return Deployment.deployed(fleet, tmp_path_factory.mktemp("locks"), "--skip-tags", "common")


def audit_log(deployment, event):
    log = Path(deployment.env["FLEETDECK_AUDIT_LOG"])
    return [line for line in map(json.loads, log.read_text().splitlines()) if line["event"] == event]


def wait_for(condition, what, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def has_release(deployment, instance, version):
    return deployment.on(instance, f"test -d /opt/refapp/releases/{version} && echo yes", check=False).strip() == "yes"



def unfinished(deployment):
    return json.loads(deployment.script("audit", "unfinished", "--json").stdout)


def test_a_second_upgrade_is_refused_and_the_first_completes_untouched(deployment):
    first = deployment.start("upgrade.yml", "--limit", "inst1", "-e", "app_version=1.1.0", *SOAKING)
    wait_for(lambda: has_release(deployment, "inst1", "1.1.0"), "the first run to unpack 1.1.0")
    second = deployment.playbook("upgrade.yml", "--limit", "inst1", "-e", "app_version=1.2.0", *FAST)
    first_result = deployment.playbook_finished(first)

    assert second.rc != 0
    assert '"Upgrade instances in rolling batches" (cli) (pid ' in second.output
    assert "instance is locked by " in second.output and f"(pid {first.pid} on " in second.output
    assert second.recap["inst1"] | {"ok": None, "skipped": None} == {
        "ok": None, "skipped": None, "changed": 0, "unreachable": 0, "failed": 1, "rescued": 0, "ignored": 0}
    assert "Return to the release the instance ran before" not in second.output
    assert "Give the instance lock back" not in second.output

    assert first_result.rc == 0, first_result.output
    health = deployment.health("inst1")
    assert (health["status"], health["version"]) == ("ok", "1.1.0")
    assert deployment.on("inst1", "ls /opt/refapp/releases").split() == ["1.0.0", "1.1.0"]
    assert deployment.on("inst1", "readlink /opt/refapp/current").strip() == "/opt/refapp/releases/1.1.0"
    assert deployment.on("inst1", "test -e /var/lib/fleetdeck/lock.json || echo free").strip() == "free"


def test_a_killed_controller_is_taken_over_by_the_rerun(deployment):
    run = deployment.start("upgrade.yml", "-e", "app_version=1.1.0", "-e", "upgrade_batches=100%", *SOAKING)
    command = Path(f"/proc/{run.pid}/cmdline").read_bytes()
    wait_for(lambda: has_release(deployment, "inst2", "1.1.0"), "the run to unpack 1.1.0 on inst2")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    (killed,) = [line for line in audit_log(deployment, "start") if f"/{run.pid}/" in line["run"]]
    assert killed["instances"] == ["inst1", "inst2"] and killed["action"] == "upgrade"
    assert not [line for line in audit_log(deployment, "end") if line["run"] == killed["run"]]
    for instance in ("inst1", "inst2"):
        lock = json.loads(deployment.on(instance, "cat /var/lib/fleetdeck/lock.json"))
        assert lock["pid"] == run.pid

    report = unfinished(deployment)
    assert report["instances"] == {"inst1": killed["run"], "inst2": killed["run"]}
    smoke = deployment.playbook("smoke_check.yml")
    for instance in ("inst1", "inst2"):
        assert f"{instance:<16} {deployment.instances[instance]:<15} " in smoke.output
        assert [row for row in smoke.output.splitlines() if f" {instance} " in row
                and row.rstrip().endswith(killed["run"])], smoke.output

    # The whole controller died: its task workers too. A worker left running keeps the holder alive (the
    # collection's unit tests show it); waiting here for them to end has taken over three minutes.
    for worker in leftover_workers(command):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker), signal.SIGKILL)
    rerun = deployment.playbook("upgrade.yml", "-e", "app_version=1.1.0", *FAST)
    assert rerun.rc == 0, rerun.output
    for instance in ("inst1", "inst2"):
        assert f"{instance}: took over the lock of " in rerun.output
        health = deployment.health(instance)
        assert (health["status"], health["version"]) == ("ok", "1.1.0")
        assert deployment.on(instance, "test -e /var/lib/fleetdeck/lock.json || echo free").strip() == "free"
    took_over = {line["instance"]: line["took_over"]["run"] for line in audit_log(deployment, "locked")
                 if line["took_over"]}
    assert took_over == {"inst1": killed["run"], "inst2": killed["run"]}
    assert unfinished(deployment)["instances"] == {}
