"""The real runner service (gunicorn) deploys and upgrades a scaffolded, vaulted fleet over the API."""

import json
import secrets
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deployment import Deployment
from tests.playbook import REPO
from tests.runner.service import Server, free_port, wait_until

FLEET_SIZE = 2
# Fleet playbook runs dominate this module: it runs on PostgreSQL only (test_console_browser on SQLite only).
pytestmark = pytest.mark.stores("postgres")


class ApiEnv:
    """What tests.runner.service.Server needs: settings in env, tokens by caller."""

    def __init__(self, deployment, base, store):
        self.dir = base
        self.tokens = {"admin": secrets.token_urlsafe(32)}
        tokens = [{"name": "hub", "token": self.tokens["admin"], "scopes": ["admin"]}]
        self.env = {**deployment.env, "FLEETDECK_RUNNER_TOKENS": json.dumps(tokens),
                    "FLEETDECK_PROJECT_DIR": str(REPO), "FLEETDECK_INVENTORY": str(deployment.inventory),
                    "FLEETDECK_RUNNER_DATA_DIR": str(base / "data"), **store.env()}


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("api")
    deployment = Deployment.create(fleet, workdir)
    # A run gets only its action's parameters, so what the tests pass with -e lives in the inventory,
    # with the environment's own SSH key (rotate_trust replaces it).
    key = workdir / "id_ed25519"
    shutil.copy(fleet.key_file, key)
    overrides = yaml.safe_load((REPO / "tests/fleet_overrides.yml").read_text())
    (deployment.inventory / "group_vars/all/test.yml").write_text(yaml.safe_dump(
        {**overrides, "app_artifact_controller_dir": str(deployment.dist), "app_artifact_base_url": "",
         "ansible_ssh_private_key_file": str(key)}))
    return deployment


@pytest.fixture(scope="module")
def server(runner_store, deployment, tmp_path_factory):
    server = Server(ApiEnv(deployment, tmp_path_factory.mktemp("runner"), runner_store), free_port())
    server.start()
    yield server
    server.stop()


def run_to_end(server, action, target, timeout=900, **params):
    status, run = server.call("POST", "/v1/runs", {"action": action, "target": target, "params": params})
    assert status == 202, run

    def done():
        run_now = server.call("GET", f"/v1/runs/{run['id']}")[1]
        return run_now if run_now["status"] not in ("queued", "waiting", "running") else None

    finished = wait_until(done, timeout, interval=1)
    if finished["status"] != "successful":
        events = server.call("GET", f"/v1/runs/{run['id']}/events?limit=1000")[1]["events"]
        finished["failures"] = [(e["host"], e["data"].get("task"), e["data"].get("res", {}).get("msg"))
                                for e in events if e["type"] in ("runner_on_failed", "runner_on_unreachable")]
    return finished


def test_deploy_then_upgrade_through_the_api(server, deployment):
    deployed = run_to_end(server, "deploy", "fleet")
    assert deployed["status"] == "successful", deployed.get("failures", deployed)
    assert set(deployed["hosts"]) == set(deployment.instances)
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in deployed["hosts"].values())
    assert {i: deployment.health(i)["version"] for i in deployment.instances} == dict.fromkeys(
        deployment.instances, "1.0.0")

    upgraded = run_to_end(server, "upgrade", "fleet", app_version="1.1.0")
    assert upgraded["status"] == "successful", upgraded.get("failures", upgraded)
    assert all(h["changed"] > 0 for h in upgraded["hosts"].values())
    assert {i: deployment.health(i)["version"] for i in deployment.instances} == dict.fromkeys(
        deployment.instances, "1.1.0")


def test_install_dependencies_then_rotate_trust_through_the_api(server, deployment):
    installed = run_to_end(server, "install_dependencies", "fleet")
    assert installed["status"] == "successful", installed.get("failures", installed)
    assert all(h["changed"] == 0 and h["failed"] == 0 for h in installed["hosts"].values())

    settings = yaml.safe_load((deployment.inventory / "group_vars/all/test.yml").read_text())
    key = Path(settings["ansible_ssh_private_key_file"])
    before = key.read_bytes()
    status, refused = server.call("POST", "/v1/runs", {"action": "rotate_trust", "target": "inst1"})
    assert status == 422 and "rotate_trust may target fleet" in refused["error"]["message"], refused
    rotated = run_to_end(server, "rotate_trust", "all")
    assert rotated["status"] == "successful", rotated.get("failures", rotated)
    assert key.read_bytes() != before
    # The next run logs in with the new key (the fleet's original key is revoked now).
    smoke = run_to_end(server, "smoke_check", "fleet")
    assert smoke["status"] == "successful", smoke.get("failures", smoke)


def test_no_vault_value_in_the_store_logs_or_responses(server, deployment):
    values = deployment.vault_values()
    runs = server.call("GET", "/v1/runs?limit=50")[1]["runs"]
    texts = [str(runs)] + [str(server.call("GET", f"/v1/runs/{r['id']}/events?limit=1000")[1]) for r in runs]
    data = [p.read_bytes().decode(errors="replace") for p in (server.env.dir / "data").rglob("*") if p.is_file()]
    texts += [*data, server.log.read_text(errors="replace")]
    assert len(runs) >= 2 and values
    for value in values:
        assert not any(value in text for text in texts)
