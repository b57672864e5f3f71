"""Rolling and canary upgrades, automatic rollback, rollback, the instance lock and the audit log on 4 hosts."""

import json
import os
import subprocess

import pytest

from tests.deployment import Deployment
from tests.playbook import BIN, REPO

FLEET_SIZE = 4
FAST = ("-e", "rollout_soak_seconds=3", "-e", "rollout_soak_interval=1", "-e", "app_health_retries=8",
        "-e", "rollout_analysis=false")  # no metrics here: tests/test_monitoring.py judges canaries


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    # The OS baseline (common) is test_deploy's; upgrades need the app only.
    deployment = Deployment.deployed(fleet, tmp_path_factory.mktemp("rollout"), "--skip-tags", "common", canary=1)
    for instance in deployment.instances:
        deployment.api(instance, "POST", "/items", '{"name": "Kept Through Upgrades"}')
    return deployment


def versions(deployment):
    return {i: deployment.health(i)["version"] for i in deployment.instances}


def pids(deployment):
    return {i: deployment.main_pid(i) for i in deployment.instances}


def test_rolling_upgrade_stops_at_an_unreachable_host(deployment):
    before = pids(deployment)
    with deployment.fleet.unreachable(deployment.fleet.hosts[2]):  # inst3, in the second batch
        result = deployment.playbook("upgrade.yml", "-e", "app_version=1.1.0", "-e",
                                     '{"upgrade_batches": [1, 2, 1]}', *FAST)
    assert result.rc != 0
    assert result.recap["inst3"]["unreachable"] == 1
    assert "not upgrading: inst3 failed or became unreachable in an earlier batch" in result.output
    summary = result.output.split("FLEETDECK SUMMARY (upgrade.yml)", 1)[1]
    for line in ("inst1                changed      1.0.0        1.1.0", "inst2                changed      1.0.0",
                 "inst3                unreachable", "inst4                failed       1.0.0        1.0.0"):
        assert line in summary, summary
    assert versions(deployment) == {"inst1": "1.1.0", "inst2": "1.1.0", "inst3": "1.0.0", "inst4": "1.0.0"}
    after = pids(deployment)
    assert {i: after[i] for i in ("inst3", "inst4")} == {i: before[i] for i in ("inst3", "inst4")}
    assert all(deployment.health(i)["status"] == "ok" for i in deployment.instances)


def test_canary_upgrade_takes_the_whole_fleet_with_its_data(deployment):
    result = deployment.playbook("canary_upgrade.yml", "-e", "app_version=1.1.0", "-e", "upgrade_batches=50%", *FAST)
    assert result.rc == 0, result.output
    for instance in deployment.instances:
        health = deployment.health(instance)
        assert (health["status"], health["version"], health["schema"]) == ("ok", "1.1.0", 2)
        items = deployment.api(instance, "GET", "/items")["items"]
        assert [(i["name"], i["slug"]) for i in items] == [("Kept Through Upgrades", "kept-through-upgrades")]
        assert deployment.on(instance, "ls /opt/refapp/shared/data/items").split() == [f"{items[0]['id']}.json"]
    pinned = (deployment.inventory / "host_vars/inst4/main.yml").read_text()
    assert 'app_version: "1.1.0"' in pinned

    again = deployment.playbook("canary_upgrade.yml", "-e", "app_version=1.1.0", "-e", "upgrade_batches=100%", *FAST)
    assert again.rc == 0, again.output
    assert again.changed() == dict.fromkeys(deployment.instances, 0)


def test_failing_canary_is_rolled_back_and_alerts(deployment, alerts):
    received = alerts.received
    before = pids(deployment)
    result = deployment.playbook("canary_upgrade.yml", "-e", "app_version=1.2.0", *alerts.args, *FAST)
    assert result.rc != 0
    assert "upgrade to 1.2.0 failed" in result.output and "rolled back to 1.1.0" in result.output
    assert versions(deployment) == dict.fromkeys(deployment.instances, "1.1.0")
    assert deployment.health("inst1")["status"] == "ok"
    after = pids(deployment)
    assert {i: after[i] for i in after if i != "inst1"} == {i: before[i] for i in before if i != "inst1"}
    assert len(received) == 1 and received[0]["valid"]
    assert received[0]["body"] | {"reason": None, "play": None} == {
        "event": "rollout_failed", "instance": "inst1", "version": "1.2.0", "ring": "canary",
        "rolled_back_to": "1.1.0", "reason": None, "play": None, "analysis": None}  # analysis is off here (FAST)
    assert alerts.secret not in result.output


def test_rollback_across_the_migration_needs_the_paired_backup_and_stays(deployment):
    """inst2's upgrade to 1.1.0 migrated the schema after a backup: a bare rollback to 1.0.0 is refused, one that
    restores that backup brings back the data from before the migration and reports the rows written since."""
    deployment.api("inst2", "POST", "/items", '{"name": "written after the upgrade"}')
    pid = deployment.main_pid("inst2")
    refused = deployment.playbook("rollback.yml", "--limit", "inst2")
    assert refused.rc != 0 and refused.changed() == {"inst2": 0}
    assert "inst2: rolling back from 1.1.0 to 1.0.0 crosses the schema migration" in refused.output
    said = " ".join(refused.output.split())
    assert "-e rollback_down_migration=true (runs 1.1.0's bin/refapp-migrate-down; rows written since are kept)" \
        in said and "Nothing was changed" in said
    assert deployment.main_pid("inst2") == pid and deployment.health("inst2")["version"] == "1.1.0"

    result = deployment.playbook("rollback.yml", "--limit", "inst2", "-e", "rollback_restore_data=true")
    assert result.rc == 0, result.output
    assert "discards the rows written since: items +1 (" in " ".join(result.output.split())
    health = deployment.health("inst2")
    assert (health["status"], health["version"], health["schema"]) == ("ok", "1.0.0", 1)
    names = deployment.on("inst2", "runuser -u postgres -- psql -d refapp -Atc 'select name from items'").split("\n")
    assert "Kept Through Upgrades" in names and "written after the upgrade" not in names
    again = deployment.playbook("rollback.yml", "--limit", "inst2")
    assert again.rc == 0 and again.changed() == {"inst2": 0}, again.output
    assert deployment.health("inst2")["version"] == "1.0.0"

    missing = deployment.playbook("rollback.yml", "--limit", "inst2", "-e", "app_rollback_version=9.9.9")
    assert missing.rc != 0
    assert "cannot roll back to 9.9.9; releases kept here: 1.0.0, 1.1.0" in missing.output


def test_rollback_across_the_migration_with_the_releases_down_migration_keeps_new_rows(deployment):
    """inst3's 1.1.0 ships a down-migration: asking for it and the paired backup at once is refused; the
    down-migration takes the schema back to 1.0.0's and keeps the rows written since the upgrade."""
    deployment.api("inst3", "POST", "/items", '{"name": "written after the upgrade"}')
    pid = deployment.main_pid("inst3")
    both = deployment.playbook("rollback.yml", "--limit", "inst3", "-e", "rollback_down_migration=true",
                               "-e", "rollback_restore_data=true")
    assert both.rc != 0 and both.changed() == {"inst3": 0}
    assert "Choose ONE of -e rollback_down_migration=true" in " ".join(both.output.split()), both.output
    assert deployment.main_pid("inst3") == pid and deployment.health("inst3")["schema"] == 2

    result = deployment.playbook("rollback.yml", "--limit", "inst3", "-e", "rollback_down_migration=true")
    assert result.rc == 0, result.output
    health = deployment.health("inst3")
    assert (health["status"], health["version"], health["schema"]) == ("ok", "1.0.0", 1)
    names = deployment.on("inst3", "runuser -u postgres -- psql -d refapp -Atc "
                                   "'select name from items order by id'").split("\n")
    assert names[:2] == ["Kept Through Upgrades", "written after the upgrade"], names
    columns = deployment.on("inst3", "runuser -u postgres -- psql -d refapp -Atc \"select column_name from "
                                     "information_schema.columns where table_name = 'items'\"").split()
    assert sorted(columns) == ["created_at", "id", "name"]  # slug, added by 1.1.0's migration, is gone
    deployment.api("inst3", "POST", "/items", '{"name": "written by 1.0.0 again"}')
    again = deployment.playbook("rollback.yml", "--limit", "inst3")
    assert again.rc == 0 and again.changed() == {"inst3": 0}, again.output


def test_upgrade_check_mode_changes_nothing(deployment):
    before = pids(deployment)
    result = deployment.playbook("upgrade.yml", "--check", "--limit", "inst2", "-e", "app_version=1.1.0")
    assert result.rc == 0, result.output
    assert pids(deployment) == before
    assert deployment.on("inst2", "readlink /opt/refapp/current").strip() == "/opt/refapp/releases/1.0.0"


def test_a_locked_instance_refuses_a_second_operation(deployment):
    holder = subprocess.run(
        [str(BIN / "ansible"), "-i", str(deployment.inventory), "inst4", "-m", "fleetdeck.lifecycle.instance_lock",
         "-a", "holder=ci-job-42 token=other-run pid=4242"],
        cwd=REPO, env={**os.environ, **deployment.env}, capture_output=True, text=True)
    assert holder.returncode == 0, holder.stdout + holder.stderr
    before = deployment.main_pid("inst4")
    for playbook, *args in (("upgrade.yml", "-e", "app_version=1.0.0", *FAST), ("deploy.yml",), ("configure.yml",),
                            ("install_dependencies.yml",), ("backup.yml",), ("restore.yml",), ("rotate_secrets.yml",)):
        result = deployment.playbook(playbook, "--limit", "inst4", *args)
        assert result.rc != 0, playbook
        assert "instance is locked by ci-job-42 (pid 4242" in result.output, playbook
        assert result.recap["inst4"]["changed"] == 0, playbook
    assert deployment.main_pid("inst4") == before and deployment.health("inst4")["version"] == "1.1.0"

    unlock = deployment.playbook("unlock.yml", "--limit", "inst4")
    assert unlock.rc == 0, unlock.output
    assert deployment.fleet.ssh(deployment.instances["inst4"], "test -e /var/lib/fleetdeck/lock.json",
                                check=False).returncode == 1


def test_audit_log_has_a_line_per_instance_per_run(deployment):
    lines = [json.loads(line) for line in (deployment.inventory.parents[1] / "audit.log").read_text().splitlines()]
    lines = [line for line in lines if line["event"] == "end"]
    to_1_1 = [line for line in lines if line["action"] == "canary_upgrade" and line["version_to"] == "1.1.0"
              and line["result"] in ("ok", "changed")]
    assert sorted({line["instance"] for line in to_1_1}) == sorted(deployment.instances)
    upgraded = sorted(line["instance"] for line in to_1_1 if line["version_from"] == "1.0.0")
    assert upgraded == ["inst3", "inst4"]
    failed = [line for line in lines if line["action"] == "canary_upgrade" and line["result"] == "failed"]
    assert [(f["instance"], f["version_from"], f["version_to"]) for f in failed] == [("inst1", "1.1.0", "1.1.0")]
    deploys = [line for line in lines if line["action"] == "deploy" and line["result"] != "failed"]
    assert sorted(line["instance"] for line in deploys) == sorted(deployment.instances)
    assert all(line["operator"] and line["source"] == "cli" for line in lines)
