"""The runner API through the Flask test client, running real playbooks over SSH on a real test fleet.
What needs no host (validation, auth, errors, idempotency, OpenAPI) is in test_requests, test_idempotency,
test_openapi and test_startup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fleetdeck import vault
from fleetdeck.service.processes import process_groups

from tests.runner.service import app_for, in_process, make_env, run_environments, wait_until

FLEET_SIZE = 3
pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def env(runner_store, fleet, tmp_path_factory):
    with in_process(make_env(fleet, tmp_path_factory.mktemp("runner"), runner_store)) as runner_env:
        yield runner_env


@pytest.fixture
def hosts(fleet):
    return [h.name for h in fleet.hosts]


def start(client, env, action, target, caller="admin", **body):
    return client.post(
        "/v1/runs", json={"action": action, "target": target, **body}, headers=env.auth(caller)
    )


def finished(client, env, run_id, timeout=90):
    def done():
        run = client.get(f"/v1/runs/{run_id}", headers=env.auth()).get_json()
        return run if run["status"] not in ("queued", "waiting", "running") else None

    return wait_until(done, timeout)


def test_ping_run_succeeds_with_per_host_results(client, env, hosts):
    response = start(client, env, "ping", "testfleet")
    assert response.status_code == 202, response.get_json()
    run = finished(client, env, response.get_json()["id"])
    assert run["status"] == "successful", run
    assert run["rc"] == 0
    assert set(run["hosts"]) == set(hosts)
    assert all(h["result"] == "ok" and h["failed"] == 0 for h in run["hosts"].values())
    assert run["started"] and run["finished"] >= run["started"]


def test_a_vault_that_does_not_decrypt_fails_only_its_host_and_is_named(client, env, hosts):
    path = env.inventory / "host_vars" / hosts[1] / "vault.yml"
    original = path.read_bytes()
    path.write_bytes(vault.encrypt(b"vault_app_secret: x\n", b"not the runner's password"))
    try:
        run = finished(client, env, start(client, env, "ping", "testfleet").get_json()["id"])
    finally:
        path.write_bytes(original)
    assert run["status"] == "failed", run
    assert run["hosts"][hosts[1]]["result"] == "failed"
    assert all(run["hosts"][h]["result"] == "ok" for h in hosts if h != hosts[1]), run["hosts"]
    events = client.get(f"/v1/runs/{run['id']}/events?limit=1000", headers=env.auth()).get_json()["events"]
    failure = next(e for e in events if e["type"] == "runner_on_failed")
    assert failure["host"] == hosts[1]
    assert f"{path}: cannot be decrypted with the vault password" in failure["data"]["res"]["msg"]


def test_events_json_pages_and_sse_resume(client, env):
    run = finished(client, env, start(client, env, "ping", "testfleet").get_json()["id"])
    page = client.get(f"/v1/runs/{run['id']}/events?limit=3", headers=env.auth("reader")).get_json()
    assert [e["seq"] for e in page["events"]] == [1, 2, 3]
    assert page["next_after"] == 3
    everything = client.get(f"/v1/runs/{run['id']}/events?limit=1000", headers=env.auth()).get_json()[
        "events"
    ]
    assert "playbook_on_stats" in [e["type"] for e in everything]

    stream = client.get(
        f"/v1/runs/{run['id']}/events",
        headers={**env.auth(), "Accept": "text/event-stream", "Last-Event-ID": "3"},
    )
    assert stream.mimetype == "text/event-stream"
    frames = [
        f for f in stream.get_data(as_text=True).split("\n\n") if f.startswith("id:") or "event: end" in f
    ]
    ids = [int(f.split("\n")[0][4:]) for f in frames if f.startswith("id:")]
    assert ids == [e["seq"] for e in everything if e["seq"] > 3]
    assert frames[-1].startswith("event: end") and '"status": "successful"' in frames[-1]


def test_sse_follows_a_live_run_to_its_end(client, env, hosts):
    run_id = start(client, env, "ping", hosts[0]).get_json()["id"]
    body = client.get(f"/v1/runs/{run_id}/events", headers={**env.auth(), "Accept": "text/event-stream"})
    text = body.get_data(as_text=True)
    assert "event: playbook_on_stats" in text and text.rstrip().endswith('"rc": 0}')


def test_lease_conflict_names_the_holder_and_other_instances_run_in_parallel(client, env, hosts):
    holder = start(client, env, "sleep", hosts[0], params={"sleep_seconds": 4}).get_json()
    conflict = start(client, env, "ping", "testfleet")
    assert conflict.status_code == 409
    error = conflict.get_json()["error"]
    assert error["holder"] == holder["id"] and error["instance"] == hosts[0]
    assert holder["id"] in error["message"]
    parallel = start(client, env, "ping", hosts[1])
    assert parallel.status_code == 202
    done = finished(client, env, parallel.get_json()["id"])
    assert done["status"] == "successful"
    assert client.get(f"/v1/runs/{holder['id']}", headers=env.auth()).get_json()["status"] == "running"
    queued = start(client, env, "ping", hosts[0], wait=True)
    assert queued.status_code == 202 and queued.get_json()["status"] == "waiting"
    assert finished(client, env, holder["id"])["status"] == "successful"
    assert finished(client, env, queued.get_json()["id"])["status"] == "successful"


def test_cancel_stops_a_long_run_and_releases_its_lease(client, env, hosts, fleet):
    run = start(client, env, "sleep", hosts[2]).get_json()
    wait_until(
        lambda: any(
            e["type"] == "runner_on_start"
            for e in client.get(f"/v1/runs/{run['id']}/events", headers=env.auth()).get_json()["events"]
        )
    )
    assert process_groups(run["id"])
    response = client.post(f"/v1/runs/{run['id']}/cancel", headers=env.auth("operator"))
    assert response.status_code == 202
    done = finished(client, env, run["id"], timeout=20)
    assert done["status"] == "canceled" and done["reason"] == "canceled"
    assert not process_groups(run["id"])
    instances = client.get("/v1/instances", headers=env.auth()).get_json()["instances"]
    assert all(i["leased_by"] is None for i in instances)
    assert client.post(f"/v1/runs/{run['id']}/cancel", headers=env.auth()).status_code == 409
    assert (
        finished(client, env, start(client, env, "ping", hosts[2]).get_json()["id"])["status"] == "successful"
    )


def test_job_timeout_ends_the_run_as_timeout(app, client, env, hosts):
    action = app.extensions["fleetdeck"].catalog.actions["sleep"]
    object.__setattr__(action, "timeout", 2)
    try:
        run = start(client, env, "sleep", hosts[1]).get_json()
        done = finished(client, env, run["id"], timeout=30)
    finally:
        object.__setattr__(action, "timeout", 120)
    assert done["status"] == "timeout" and not process_groups(run["id"])


def test_vault_values_never_leave(app, client, env, hosts):
    run = finished(client, env, start(client, env, "leak", "testfleet").get_json()["id"])
    assert run["status"] == "successful"
    events = client.get(f"/v1/runs/{run['id']}/events?limit=1000", headers=env.auth()).get_data(as_text=True)
    assert "the secret is ********" in events
    stream = client.get(f"/v1/runs/{run['id']}/events", headers={**env.auth(), "Accept": "text/event-stream"})
    responses = [
        events,
        stream.get_data(as_text=True),
        client.get(f"/v1/runs/{run['id']}", headers=env.auth()).get_data(as_text=True),
        client.get("/v1/instances", headers=env.auth()).get_data(as_text=True),
        client.get("/v1/runs?limit=500", headers=env.auth()).get_data(as_text=True),
    ]
    stored = b"".join(p.read_bytes() for p in (env.dir / "data").rglob("*") if p.is_file())
    for secret in env.secrets.values():
        assert all(secret not in text for text in responses)
        assert secret.encode() not in stored


def test_smoke_check_runs_the_real_playbook(client, env, hosts):
    run = finished(client, env, start(client, env, "smoke_check", "all").get_json()["id"], timeout=120)
    assert run["status"] == "successful", run
    assert set(run["hosts"]) == set(hosts)


def test_check_mode_and_the_audit_environment(app, client, env, hosts):
    run = finished(
        client, env, start(client, env, "ping", hosts[0], check=True, caller="pinger").get_json()["id"]
    )
    assert run["status"] == "successful" and run["check"] and run["operator"] == "pinger"
    command = (env.dir / "data" / "runs" / run["id"] / "artifacts" / "artifacts" / "command").read_text()
    assert "--check" in command and "--diff" in command and "--vault-id" in command
    assert json.loads(command)["env"]["FLEETDECK_RUN_SOURCE"] == f"runner:{run['id']}"
    trail = app.extensions["fleetdeck"].store.audit_trail(run["id"])
    assert [t["what"] for t in trail] == ["run.created", "run.finished"]
    assert os.environ.get("FLEETDECK_RUN_SOURCE") is None


# -- remote execution nodes: hosts[0] is node eu-1 for hosts[1] (group eu); hosts[2] names eu-2, a node whose
# SSH port is closed; a fresh runner over its own copy of the environment ------------------------------------

NODE_KEY = "/root/.ssh/fleetdeck-instances"  # on the node: its own key to the instances


@pytest.fixture(scope="module")
def node_env(runner_store, fleet, tmp_path_factory):
    runner_env = make_env(fleet, tmp_path_factory.mktemp("nodes"), runner_store)
    # where runs write on the controller (node runs: node_return.py brings it back)
    runner_env.env["FLEETDECK_AUDIT_LOG"] = str(runner_env.dir / "audit.log")
    runner_env.env["FLEETDECK_BACKUP_STORE"] = str(runner_env.dir / "backups")
    node, eu_instance, ap_instance = fleet.hosts
    inventory = runner_env.inventory
    tree = yaml.safe_load((inventory / "hosts.yml").read_text())
    testfleet = tree["all"]["children"]["testfleet"]
    testfleet["children"] = {"eu": {"hosts": {eu_instance.name: None}}, "ap": {"hosts": {ap_instance.name: None}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    # What a region's group_vars hold: its node, and how the node reaches the instances (paths on the node).
    (inventory / "group_vars").mkdir()
    ssh_args = "-o UserKnownHostsFile={{ inventory_dir }}/known_hosts -o StrictHostKeyChecking=yes"
    for group, name in (("eu", "eu-1"), ("ap", "eu-2")):
        (inventory / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump({
            "fleetdeck_execution_node": name, "ansible_ssh_private_key_file": NODE_KEY,
            "ansible_ssh_common_args": ssh_args}))
    shutil.copy(fleet.known_hosts, inventory / "known_hosts")
    subprocess.run(["ssh", *fleet.ssh_args(), f"root@{node.address}", f"umask 077 && cat > {NODE_KEY}"],
                   input=fleet.key_file.read_bytes(), check=True)
    runner = str(Path(sys.executable).with_name("ansible-runner"))  # the node sees this machine's files
    runner_env.env["FLEETDECK_EXECUTION_NODES"] = json.dumps([
        {"name": "eu-1", "host": node.address, "user": "root", "identity_file": str(fleet.key_file),
         "ansible_runner": runner},
        {"name": "eu-2", "host": node.address, "port": 2222, "user": "root", "identity_file": str(fleet.key_file),
         "ansible_runner": runner}])
    with in_process(runner_env):
        yield runner_env


@pytest.fixture(scope="module")
def node_app(node_env):
    with app_for(node_env) as application:
        yield application


@pytest.fixture
def node_client(node_app):
    return node_app.test_client()


def on_node(fleet, command: str) -> str:
    return fleet.ssh(fleet.hosts[0], command, check=False).stdout


def node_files_with(fleet, needles: list[str]) -> list[str]:
    """Files the node wrote (its overlay's upper layer, its /tmp, /run and /dev/shm) that hold one of `needles`."""
    node = fleet.hosts[0]
    hostdir = fleet.dir / "hosts" / node.name
    pid = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout.split()[0]
    places = [hostdir / "mnt" / "upper", *(hostdir / "root" / d for d in ("tmp", "run", "dev/shm"))]
    found = subprocess.run(["nsenter", "-t", pid, "-m", "--", "grep", "-rlF", "-f", "-", *map(str, places)],
                           input="\n".join(needles), capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.split()


def node_processes_with(fleet, needles: list[str]) -> str:
    """The count of the node's processes whose arguments or environment hold one of `needles` (read there)."""
    script = "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ 2>/dev/null | grep -qaF -f /dev/fd/3 && echo $p; done"
    found = subprocess.run(["ssh", *fleet.ssh_args(), f"root@{fleet.hosts[0].address}",
                            f"cat > /run/needles && {script} 3</run/needles; rm /run/needles"],
                           input="\n".join(needles), capture_output=True, text=True, check=True)
    return found.stdout


def test_a_run_on_an_execution_node_streams_its_events_back(node_client, node_env, fleet):
    instance = fleet.hosts[1].name
    response = start(node_client, node_env, "leak", instance)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["node"] == "eu-1"
    run = finished(node_client, node_env, response.get_json()["id"], timeout=180)
    events = node_client.get(f"/v1/runs/{run['id']}/events?limit=1000", headers=node_env.auth()).get_json()["events"]
    assert run["status"] == "successful", (run, [e["stdout"] for e in events])
    assert run["node"] == "eu-1" and set(run["hosts"]) == {instance}
    assert run["hosts"][instance]["result"] == "ok"
    oks = {(e["task"], e["host"]) for e in events if e["type"] == "runner_on_ok"}
    assert oks == {("Print the secret", instance), ("Echo the secret on the host", instance)}, oks
    assert any("the secret is ********" in e["stdout"] for e in events)
    # ansible-playbook ran on the node, in the worker's private dir there, which is gone now
    command = json.loads((node_env.dir / "data/runs" / run["id"] / "artifacts/artifacts/command").read_text())
    assert command["cwd"].startswith("/tmp/fleetdeck-run-") and command["env"]["FLEETDECK_RUN_SOURCE"]
    assert on_node(fleet, "ls -d /tmp/fleetdeck-run-* 2>/dev/null") == ""
    kept = {p.name for p in (node_env.dir / "data/runs" / run["id"]).rglob("*") if p.is_file()}
    assert kept == {"command", "status", "rc"}, "the run dir is scrubbed as a local run's"
    # no secret on the node's disk, in the store, the run dirs or the answers
    password = vault.read_password(node_env.password_file).decode()
    needles = [*node_env.secrets.values(), password]
    canary = f"canary-{run['id']}"  # proves the search sees what the node writes
    on_node(fleet, f"echo {canary} > /tmp/canary")
    canary_file = fleet.dir / "hosts" / fleet.hosts[0].name / "root/tmp/canary"
    assert node_files_with(fleet, [canary, *needles]) == [str(canary_file)]
    stored = b"".join(p.read_bytes() for p in (node_env.dir / "data").rglob("*") if p.is_file())
    answers = json.dumps(events) + json.dumps(run)
    for needle in needles:
        assert needle.encode() not in stored and needle not in answers


def test_cancel_stops_ansible_playbook_on_the_node(node_client, node_env, fleet):
    run = start(node_client, node_env, "sleep", fleet.hosts[1].name, params={"sleep_seconds": 300}).get_json()
    wait_until(lambda: any(e["type"] == "runner_on_start" for e in node_client.get(
        f"/v1/runs/{run['id']}/events", headers=node_env.auth()).get_json()["events"]), timeout=120)
    assert "ansible-playbook" in on_node(fleet, "ps -eo args"), "the run is not running on the node"
    password = vault.read_password(node_env.password_file).decode()
    assert node_processes_with(fleet, [f"runner:{run['id']}"]), "the search finds the run's processes"
    assert node_processes_with(fleet, [password, *node_env.secrets.values()]) == ""
    local = run_environments(run["id"])
    assert local, "no local process (ssh) of the remote run found"
    for pid, environ in local.items():
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes() + environ, pid
    assert node_client.post(f"/v1/runs/{run['id']}/cancel", headers=node_env.auth()).status_code == 202
    done = finished(node_client, node_env, run["id"], timeout=30)
    assert done["status"] == "canceled" and done["reason"] == "canceled" and done["node"] == "eu-1"
    wait_until(lambda: "ansible-playbook" not in on_node(fleet, "ps -eo args"), timeout=20)
    assert "ansible-runner" not in on_node(fleet, "ps -eo args")
    assert on_node(fleet, "ls -d /tmp/fleetdeck-run-* 2>/dev/null") == ""
    assert not process_groups(run["id"])


def test_a_remote_run_past_its_timeout_ends_timeout_and_stops_on_the_node(node_app, node_client, node_env, fleet):
    action = node_app.extensions["fleetdeck"].catalog.actions["sleep"]
    object.__setattr__(action, "timeout", 15)
    try:
        run = start(node_client, node_env, "sleep", fleet.hosts[1].name).get_json()
        wait_until(lambda: any(e["type"] == "runner_on_start" for e in node_client.get(
            f"/v1/runs/{run['id']}/events", headers=node_env.auth()).get_json()["events"]), timeout=15)
        done = finished(node_client, node_env, run["id"], timeout=60)
    finally:
        object.__setattr__(action, "timeout", 120)
    assert done["status"] == "timeout" and done["node"] == "eu-1", done
    wait_until(lambda: "ansible-playbook" not in on_node(fleet, "ps -eo args"), timeout=20)
    assert on_node(fleet, "ls -d /tmp/fleetdeck-run-* 2>/dev/null") == ""


def test_instances_on_different_nodes_are_refused_and_an_unreachable_node_is_named(node_client, node_env, fleet):
    node, eu, ap = (h.name for h in fleet.hosts)
    refused = start(node_client, node_env, "ping", "testfleet")
    assert refused.status_code == 422, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "mixed_execution_nodes"
    assert error["nodes"] == {"eu-1": [eu], "eu-2": [ap], "local": [node]}
    assert f"eu-1: {eu}" in error["message"] and f"local: {node}" in error["message"]

    local = finished(node_client, node_env, start(node_client, node_env, "ping", node).get_json()["id"])
    assert local["status"] == "successful" and local["node"] is None

    broken = finished(node_client, node_env, start(node_client, node_env, "ping", ap).get_json()["id"])
    assert broken["status"] == "error" and broken["node"] == "eu-2"
    assert broken["reason"].startswith(f"execution node eu-2 ({fleet.hosts[0].address} port 2222) unreachable"), broken
    assert "Connection refused" in broken["reason"]

    kept_off = start(node_client, node_env, "canary_upgrade", "eu", params={"app_version": "1.2.3"})
    assert kept_off.status_code == 422, kept_off.get_json()
    error = kept_off.get_json()["error"]
    assert (error["code"], error["action"], error["node"]) == ("local_only_action", "canary_upgrade", "eu-1")
    assert error["message"].startswith("canary_upgrade runs only on this runner, and the target's instances run on "
                                       "execution node eu-1: as the real one's, its state is on the runner's machine")


def run_events(client, env, run_id: str) -> list[dict]:
    return client.get(f"/v1/runs/{run_id}/events?limit=1000", headers=env.auth()).get_json()["events"]


def test_what_a_node_run_writes_on_its_controller_comes_back(node_app, node_client, node_env, fleet):
    instance = fleet.hosts[1].name
    host_vars = node_env.inventory / "host_vars" / instance
    note, vaulted = host_vars / "note.yml", (host_vars / "vault.yml").read_bytes()
    note.write_text("note_mark: before\n")
    run = start(node_client, node_env, "controller_write", instance,
                params={"write_mark": "first", "write_sleep": 5}).get_json()
    wait_until(lambda: run_events(node_client, node_env, run["id"]), timeout=120)
    note.write_text("note_mark: edited here\n")  # changed on the controller during the run: kept
    done = finished(node_client, node_env, run["id"], timeout=120)
    assert done["status"] == "successful" and done["node"] == "eu-1", done
    assert (host_vars / "written.yml").read_text() == "written_mark: first\n"
    assert note.read_text() == "note_mark: edited here\n"
    assert (host_vars / "vault.yml").read_bytes() == vaulted
    store = Path(node_env.env["FLEETDECK_BACKUP_STORE"])
    assert json.loads((store / instance / "first" / "manifest.json").read_text()) == {"id": "first"}
    audited = [json.loads(line) for line in Path(node_env.env["FLEETDECK_AUDIT_LOG"]).read_text().splitlines()]
    ours = [line for line in audited if line.get("source") == f"runner:{run['id']}"]
    assert [(line["event"], line["action"]) for line in ours] == [("start", "controller_write"),
                                                                 ("end", "controller_write")], ours
    assert ours[1]["instance"] == instance and ours[1]["result"] == "changed"
    (returned,) = [t for t in node_app.extensions["fleetdeck"].store.audit_trail(run["id"])
                   if t["what"] == "run.node_returned"]
    assert returned["detail"] == {
        "node": "eu-1", "inventory": [f"host_vars/{instance}/written.yml"], "audit_lines": 2,
        "backups": [f"{instance}/first/manifest.json"],
        "conflicts": [f"inventory/host_vars/{instance}/note.yml: changed on the controller during the run, kept"]}
    last = run_events(node_client, node_env, run["id"])[-1]
    assert last["type"] == "node_returned" and last["data"] == returned["detail"]
    assert last["stdout"].startswith("execution node eu-1: applied 1 inventory file(s), 2 audit line(s), 1 backup")
    assert "NOT applied: inventory/host_vars/" in last["stdout"]
    kept = {p.name for p in (node_env.dir / "data/runs" / run["id"]).rglob("*") if p.is_file()}
    assert kept == {"command", "status", "rc"}, "what came back is scrubbed with the run dir"


def test_a_canceled_node_run_applies_nothing(node_app, node_client, node_env, fleet):
    instance = fleet.hosts[1].name
    audit_log = Path(node_env.env["FLEETDECK_AUDIT_LOG"])
    before = audit_log.read_bytes() if audit_log.exists() else b""
    run = start(node_client, node_env, "controller_write", instance,
                params={"write_mark": "canceled", "write_sleep": 300}).get_json()
    wait_until(lambda: any(e["type"] == "runner_on_start" and e["task"] == "Keep the host busy"
                           for e in run_events(node_client, node_env, run["id"])), timeout=120)
    assert node_client.post(f"/v1/runs/{run['id']}/cancel", headers=node_env.auth()).status_code == 202
    done = finished(node_client, node_env, run["id"], timeout=30)
    assert done["status"] == "canceled", done
    written = node_env.inventory / "host_vars" / instance / "written.yml"
    assert "canceled" not in (written.read_text() if written.exists() else "")
    assert not (Path(node_env.env["FLEETDECK_BACKUP_STORE"]) / instance / "canceled").exists()
    assert (audit_log.read_bytes() if audit_log.exists() else b"") == before
    trail = node_app.extensions["fleetdeck"].store.audit_trail(run["id"])
    assert "run.node_returned" not in [t["what"] for t in trail]
