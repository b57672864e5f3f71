"""The instances API without test hosts (Flask test client, local inventory): field errors that name the field
and write nothing, scopes, PATCH diffs and the version hold, decommission refusals, and the inventory edits
a decommission ends with. Create -> deploy -> decommission on a real host: test_provisioning_fleet.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime

import pytest
import yaml
from fleetdeck import instance_edit, vault
from fleetdeck.errors import FleetdeckError
from fleetdeck.service import probe, provisioning
from fleetdeck.service.config import PACKAGE_DIR

from tests.playbook import REPO
from tests.runner.service import app_for, in_process, make_local_env, wait_until


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    runner_env = make_local_env(tmp_path_factory.mktemp("runner"), runner_store)
    shutil.copytree(REPO / "inventory" / "example" / "group_vars", runner_env.inventory / "group_vars")
    with in_process(runner_env):
        yield runner_env


@pytest.fixture(scope="module")
def real_catalog_app(env):
    """The product's catalog (deploy, decommission), so creation goes as far as the host key."""
    with app_for(env, FLEETDECK_CATALOG=str(PACKAGE_DIR / "actions.yml")) as application:
        yield application


def snapshot(env) -> dict[str, str]:
    """Every file of the environment and beside it, but for the runner's store and the lock file."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(env.inventory.parent.rglob("*"))
            if p.is_file() and "data" not in p.parts and p.suffix != ".lock"}


def field_error(response, field: str, code: str = "invalid_field", status: int = 422) -> str:
    body = response.get_json()
    assert response.status_code == status, body
    assert body["error"]["code"] == code, body
    assert body["error"]["field"] == field, body
    assert field in body["error"]["message"]
    return body["error"]["message"]


GOOD = {"name": "acme", "domain": "acme.example.com", "address": "127.0.0.1", "port": 1}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"name": "Acme"}, "name", "must start with a lowercase letter"),
    ({"name": "fleet"}, "name", "reserved group name"),
    ({"domain": "localhost"}, "domain", "single label"),
    ({"address": "10.0.0.300"}, "address", "neither an IPv4/IPv6 address"),
    ({"tier": 3}, "tier", "must be one of 1, 2"),
    ({"tier": "1"}, "tier", "must be an integer"),
    ({"canary": "yes"}, "canary", "true or false"),
    ({"version": "latest"}, "version", "MAJOR.MINOR.PATCH"),
    ({"features": ["new ui"]}, "features", "lowercase letters"),
    ({"port": 70000}, "port", "outside 1-65535"),
    ({"colour": "red"}, "colour", "unknown field"),
])
def test_bad_fields_are_named_and_nothing_is_written(real_catalog_app, env, change, field, words):
    before = snapshot(env)
    response = real_catalog_app.test_client().post("/v1/instances", json={**GOOD, **change},
                                                   headers=env.auth("provisioner"))
    assert words in field_error(response, field)
    assert snapshot(env) == before


def test_missing_fields_are_all_named(real_catalog_app, env):
    body = real_catalog_app.test_client().post(
        "/v1/instances", json={"name": "acme"}, headers=env.auth("provisioner")).get_json()
    assert body["error"]["fields"] == {"domain": "domain: required", "address": "address: required"}


def test_an_existing_name_or_an_unreachable_address_writes_nothing(real_catalog_app, env):
    client = real_catalog_app.test_client()
    before = snapshot(env)
    exists = client.post("/v1/instances", json={**GOOD, "name": "local-1"}, headers=env.auth("provisioner"))
    assert "already exists" in field_error(exists, "name", "instance_exists", 409)
    unreachable = client.post("/v1/instances", json=GOOD, headers=env.auth("provisioner"))
    assert "port 1" in field_error(unreachable, "address", "host_unreachable")
    assert snapshot(env) == before
    assert client.get("/v1/instances/acme", headers=env.auth()).status_code == 404


def test_without_a_deploy_action_nothing_is_provisioned(client, env):
    before = snapshot(env)
    response = client.post("/v1/instances", json=GOOD, headers=env.auth("provisioner"))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "action_unavailable"
    assert snapshot(env) == before


IMPORT = {"name": "shop", "domain": "shop.example.com", "address": "127.0.0.1", "port": 1}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"name": "Shop"}, "name", "must start with a lowercase letter"),
    ({"domain": "shop"}, "domain", "single label"),
    ({"address": "10.0.0.300"}, "address", "neither an IPv4/IPv6 address"),
    ({"env_file": "refapp.env"}, "env_file", "must be an absolute path"),
    ({"env_file": "/etc/refapp/a b.env"}, "env_file", "without whitespace"),
    ({"backup": "no"}, "backup", "true or false"),
    ({"port": 0}, "port", "outside 1-65535"),
    ({"tier": 3}, "tier", "must be one of 1, 2"),
    ({"canary": True}, "canary", "unknown field"),
])
def test_import_names_the_bad_field_and_writes_nothing(real_catalog_app, env, change, field, words):
    before = snapshot(env)
    response = real_catalog_app.test_client().post("/v1/imports", json={**IMPORT, **change},
                                                   headers=env.auth("provisioner"))
    assert words in field_error(response, field)
    assert snapshot(env) == before


def test_import_refuses_an_existing_name_before_connecting_and_an_unreachable_address(real_catalog_app, env):
    client = real_catalog_app.test_client()
    before = snapshot(env)
    exists = client.post("/v1/imports", json={**IMPORT, "name": "local-1"}, headers=env.auth("provisioner"))
    assert "refuses to overwrite it" in field_error(exists, "name", "instance_exists", 409)
    unreachable = client.post("/v1/imports", json=IMPORT, headers=env.auth("provisioner"))
    assert "cannot reach 127.0.0.1 port 1" in field_error(unreachable, "address", "host_unreachable")
    missing = client.post("/v1/imports", json={"name": "shop"}, headers=env.auth("provisioner")).get_json()
    assert missing["error"]["fields"] == {"domain": "domain: required", "address": "address: required"}
    assert snapshot(env) == before
    assert client.get("/v1/instances/shop", headers=env.auth()).status_code == 404


def test_import_needs_the_provision_scope_and_the_backup_and_configure_actions(client, real_catalog_app, env):
    denied = real_catalog_app.test_client().post("/v1/imports", json=IMPORT, headers=env.auth("operator"))
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "forbidden"
    unavailable = client.post("/v1/imports", json=IMPORT, headers=env.auth("provisioner")).get_json()
    assert unavailable["error"] == {"code": "action_unavailable", "message": "the runner's catalog has no configure "
                                    "or backup action: cannot import"}


@pytest.mark.parametrize(("caller", "method", "path"), [
    ("reader", "post", "/v1/instances"),
    ("operator", "post", "/v1/instances"),
    ("reader", "patch", "/v1/instances/local-1"),
    ("operator", "delete", "/v1/instances/local-1"),
])
def test_provisioning_needs_the_provision_scope(client, env, caller, method, path):
    response = getattr(client, method)(path, json={"hold": True}, headers=env.auth(caller))
    assert response.status_code == 403, response.get_json()
    assert "provision" in response.get_json()["error"]["message"]


def test_a_hold_is_written_with_its_reason_shown_and_released(client, env):
    main = env.inventory / "host_vars" / "local-2" / "main.yml"
    original = main.read_text()
    held = client.patch("/v1/instances/local-2", json={"hold": True, "hold_reason": "customer freeze"},
                        headers=env.auth("provisioner"))
    assert held.status_code == 200, held.get_json()
    assert "+rollout_hold: true" in held.get_json()["diff"]
    assert '+rollout_hold_reason: "customer freeze"' in held.get_json()["diff"]
    assert yaml.safe_load(main.read_text()) == {**yaml.safe_load(original), "rollout_hold": True,
                                                "rollout_hold_reason": "customer freeze"}
    assert main.read_text().startswith(original)  # the rest of the file as it was
    shown = client.get("/v1/instances/local-2", headers=env.auth("reader")).get_json()
    assert shown["state"] == "held" and shown["hold"] == {"held": True, "reason": "customer freeze"}
    assert shown["audit"][0]["what"] == "instance.changed" and "rollout_hold" in shown["audit"][0]["detail"]["diff"]
    listed = client.get("/v1/instances?state=held", headers=env.auth("reader")).get_json()["instances"]
    assert [i["name"] for i in listed] == ["local-2"]

    released = client.patch("/v1/instances/local-2", json={"hold": False}, headers=env.auth("provisioner"))
    assert "-rollout_hold_reason" in released.get_json()["diff"]
    assert yaml.safe_load(main.read_text()) == {**yaml.safe_load(original), "rollout_hold": False}
    again = client.patch("/v1/instances/local-2", json={"hold": False}, headers=env.auth("provisioner"))
    assert again.get_json()["diff"] == ""


def test_tier_canary_and_flags_change_only_their_groups(client, env):
    response = client.patch("/v1/instances/local-3", json={"tier": 2, "canary": True, "features": ["beta", "new_ui"]},
                            headers=env.auth("provisioner"))
    assert response.status_code == 200, response.get_json()
    instance = response.get_json()["instance"]
    assert (instance["tier"], instance["canary"], instance["features"]) == (2, True, ["beta", "new_ui"])
    assert set(instance["groups"]) >= {"testfleet", "tier2", "canary", "fleet"}
    assert "tier2" in response.get_json()["diff"] and "fleetdeck_tier: 2" in response.get_json()["diff"]
    back = client.patch("/v1/instances/local-3", json={"tier": 1, "canary": False},
                        headers=env.auth("provisioner")).get_json()["instance"]
    assert "tier2" not in back["groups"] and "canary" not in back["groups"] and "testfleet" in back["groups"]


@pytest.mark.parametrize(("body", "field"), [
    ({"tier": 0}, "tier"),
    ({"features": "beta"}, "features"),
    ({"hold_reason": "no hold to explain"}, "hold_reason"),
    ({"hold": True, "hold_reason": "two\nlines"}, "hold_reason"),
    ({"name": "other"}, "name"),
])
def test_bad_changes_are_named_and_nothing_is_written(client, env, body, field):
    before = snapshot(env)
    field_error(client.patch("/v1/instances/local-1", json=body, headers=env.auth("provisioner")), field)
    assert snapshot(env) == before


def test_unknown_instances_are_404(client, env):
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)("/v1/instances/nope", json={"hold": True}, headers=env.auth())
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "unknown_instance"


def test_decommission_is_refused_while_a_run_is_active(client, env):
    run = client.post("/v1/runs", json={"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 30}},
                      headers=env.auth("operator")).get_json()
    assert run["id"], run
    before = snapshot(env)
    refused = client.delete("/v1/instances/local-1", headers=env.auth("provisioner"))
    assert refused.status_code == 409 and refused.get_json()["error"]["run_id"] == run["id"], refused.get_json()
    assert client.delete("/v1/instances/local-1?keep_data=maybe",
                         headers=env.auth("provisioner")).get_json()["error"]["code"] == "invalid_argument"
    client.post(f"/v1/runs/{run['id']}/cancel", headers=env.auth("operator"))
    wait_until(lambda: client.get(f"/v1/runs/{run['id']}", headers=env.auth()).get_json()["status"] == "canceled")
    assert snapshot(env) == before


def test_removal_archives_the_vault_encrypted_and_unpins_the_host_key(runner_store, tmp_path):
    env = make_local_env(tmp_path, runner_store)
    known = env.inventory / "known_hosts"
    known.write_text("10.1.0.7 ssh-ed25519 AAAAkeyofseven\n10.1.0.8 ssh-ed25519 AAAAkeyofeight\n")
    main = env.inventory / "host_vars" / "local-1" / "main.yml"
    main.write_text(main.read_text() + "ansible_host: 10.1.0.7\n")
    with in_process(env):
        archive, diff = instance_edit.remove(env.inventory, "local-1")
    assert [line for line in diff.splitlines() if line.startswith("-") and "local-1:" in line]
    assert known.read_text() == "10.1.0.8 ssh-ed25519 AAAAkeyofeight\n"
    assert (archive / "known_hosts").read_text() == "10.1.0.7 ssh-ed25519 AAAAkeyofseven\n"
    archived = archive / "host_vars" / "vault.yml"
    assert archived.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    assert vault.decrypt_file(archived, vault.read_password(env.password_file)) == {
        "vault_app_secret": env.secrets["local-1"]}
    assert not (env.inventory / "host_vars" / "local-1").exists()
    assert "local-1" not in yaml.safe_load((env.inventory / "hosts.yml").read_text())["all"]["children"]["testfleet"][
        "hosts"]
    assert archive.parent.name == ".archive"


def test_set_instance_is_the_same_change_on_the_command_line(tmp_path):
    env = make_local_env(tmp_path)
    script = [str(REPO / "scripts" / "set-instance"), "-i", str(env.inventory), "local-1"]
    held = subprocess.run([*script, "--hold", "--hold-reason", "migration"], capture_output=True, text=True)
    assert held.returncode == 0, held.stderr
    assert '+rollout_hold_reason: "migration"' in held.stdout
    main = yaml.safe_load((env.inventory / "host_vars" / "local-1" / "main.yml").read_text())
    assert main["rollout_hold"] is True and main["rollout_hold_reason"] == "migration"
    refused = subprocess.run([*script, "--features", "Bad Flag"], capture_output=True, text=True)
    assert refused.returncode == 2 and "features" in refused.stderr


def test_detail_shows_secret_ages_never_values(client, env):
    detail = client.get("/v1/instances/local-1", headers=env.auth("reader")).get_json()
    names = {s["secret"] for s in detail["secret_ages"]}
    assert detail["secret_ages_error"] is None and "app_api_token" in names, detail
    # The test vaults record no rotation time: unknown age, so overdue.
    assert all(s["age_days"] is None and s["overdue"] for s in detail["secret_ages"])
    assert env.secrets["local-1"] not in json.dumps(detail)


def test_the_health_url_is_resolved_as_the_app_role_does(tmp_path):
    env = make_local_env(tmp_path)
    shutil.copytree(REPO / "inventory" / "example" / "group_vars", env.inventory / "group_vars")
    assert probe.health_url(env.inventory, {}) == "http://127.0.0.1:8080/health"
    assert probe.health_url(env.inventory, {"app_port": 9001}) == "http://127.0.0.1:9001/health"
    with pytest.raises(FleetdeckError, match="app_health_url"):
        probe.health_url(env.inventory, {"app_health_url": "http://{{ nowhere }}/health"})


@pytest.mark.parametrize(("last", "held", "probed", "state"), [
    (None, True, None, "held"),
    ({"status": "running"}, False, probe.Probe(0, reachable=True, healthy=True, version="1.0.0"), "pending"),
    (None, False, None, "pending"),
    ({"status": "successful"}, False, probe.Probe(0, reachable=False), "down"),
    ({"status": "successful"}, False, probe.Probe(0, reachable=True, healthy=False), "down"),
    ({"status": "failed"}, False, probe.Probe(0, reachable=True, healthy=True, version="1.0.0"), "warning"),
    ({"status": "successful"}, False, probe.Probe(0, reachable=True, healthy=True, version="1.1.0"), "warning"),
    (None, False, probe.Probe(0, reachable=True, healthy=True, version="1.0.0"), "ok"),
    ({"status": "successful", "hosts": {}}, False, None, "ok"),
    ({"status": "failed", "hosts": {"a": {"unreachable": 1}}}, False, None, "down"),
])
def test_the_state_comes_from_the_probe_the_last_run_and_the_hold(last, held, probed, state):
    assert provisioning._state(last, held, probed, "1.0.0") == state


def test_an_unreachable_instance_is_down_with_the_reason_and_the_age(runner_store, tmp_path):
    env = make_local_env(tmp_path, runner_store)
    main = env.inventory / "host_vars" / "local-1" / "main.yml"
    main.write_text(main.read_text() + "ansible_host: 127.0.0.1\nansible_port: 1\n")
    with in_process(env), app_for(env) as application:
        client = application.test_client()
        unpinned = client.get("/v1/instances/local-2", headers=env.auth("reader")).get_json()["health"]
        assert "known_hosts does not exist" in unpinned["detail"], unpinned
        (env.inventory / "known_hosts").write_text("")
        shown = client.get("/v1/instances/local-1", headers=env.auth("reader")).get_json()
        assert shown["state"] == "down" and shown["running_version"] is None, shown
        assert not shown["health"]["reachable"] and "port 1" in shown["health"]["detail"], shown["health"]
        first = shown["health"]["age_seconds"]
        time.sleep(1.1)
        again = client.get("/v1/instances?state=down", headers=env.auth("reader")).get_json()["instances"]
        assert "local-1" in [i["name"] for i in again]
        cached = next(i for i in again if i["name"] == "local-1")["health"]
        assert cached["age_seconds"] > first, "a fresh result is served from the cache, older each time"


def test_backups_are_listed_from_the_stores_manifests(client, env, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETDECK_BACKUP_STORE", str(tmp_path))
    for backup_id, finished in (("20261130T010000Z", "2026-11-30T01:00:09Z"), ("20261201T010000Z", None)):
        (tmp_path / "local-1" / backup_id).mkdir(parents=True)
        (tmp_path / "local-1" / backup_id / "manifest.json").write_text(json.dumps({
            "id": backup_id, "app_version": "1.0.0", "finished_at": finished, "database": "not shown",
            "parts": {"database.dump": {"sha256": "0" * 64, "size": 10}, "data.tar.gz": {"sha256": "1" * 64,
                                                                                          "size": 5}}}))
    (tmp_path / "local-1" / "20261202T010000Z").mkdir()
    (tmp_path / "local-1" / "20261202T010000Z" / "manifest.json").write_text("{torn")
    detail = client.get("/v1/instances/local-1", headers=env.auth("reader")).get_json()
    assert [b["id"] for b in detail["backups"]] == ["20261201T010000Z", "20261130T010000Z"]
    assert detail["backups"][1] == {"id": "20261130T010000Z", "app_version": "1.0.0",
                                    "finished_at": "2026-11-30T01:00:09Z", "size_bytes": 15}
    assert "20261202T010000Z" in detail["backups_error"] and "not shown" not in json.dumps(detail)
    finished = datetime(2026, 11, 30, 1, 0, 9, tzinfo=UTC).timestamp()  # the newest with a finish time
    assert abs(detail["last_backup_age_seconds"] - (time.time() - finished)) < 5, detail["last_backup_age_seconds"]


def git(where, *args: str) -> str:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=True).stdout


def test_an_environment_that_is_a_repository_gets_a_commit_per_change(runner_store, tmp_path):
    env = make_local_env(tmp_path, runner_store)
    git(env.inventory, "init", "-q")
    git(env.inventory, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "start", "--allow-empty")
    git(env.inventory, "add", "-A")
    git(env.inventory, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the environment")
    with in_process(env), app_for(env) as application:
        client = application.test_client()
        held = client.patch("/v1/instances/local-1", json={"hold": True}, headers=env.auth("provisioner"))
        assert held.status_code == 200, held.get_json()
        client.patch("/v1/instances/local-1", json={"hold": True}, headers=env.auth("provisioner"))  # no change
    assert git(env.inventory, "log", "--format=%s").splitlines() == ["change instance local-1", "the environment",
                                                                   "start"]
    assert "+rollout_hold: true" in git(env.inventory, "show", "HEAD", "--", "host_vars/local-1/main.yml")
    assert git(env.inventory, "status", "--porcelain") == ""
    with in_process(env):
        instance_edit.remove(env.inventory, "local-2")
    assert git(env.inventory, "log", "-1", "--format=%s").strip() == "remove instance local-2 (its host_vars archived)"
    shown = git(env.inventory, "show", "--stat", "--format=", "HEAD")
    assert "hosts.yml" in shown and "local-2" in shown and git(env.inventory, "status", "--porcelain") == ""


def test_an_environment_inside_another_repository_is_not_committed(runner_store, tmp_path):
    git(tmp_path, "init", "-q")
    env = make_local_env(tmp_path / "outer", runner_store)
    with in_process(env):
        instance_edit.change(env.inventory, "local-1", instance_edit.Change(hold=True))
    assert subprocess.run(["git", "-C", str(tmp_path), "log"], capture_output=True).returncode != 0, "no commit"
