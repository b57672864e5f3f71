"""rotate_trust.yml: the controller's SSH key replaced on every host, over real SSH."""

import shutil
import subprocess

import pytest
import yaml

from tests.playbook import ansible_playbook

pytestmark = pytest.mark.fleet
FLEET_SIZE = 2


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    """An inventory of the fleet that logs in with its own copy of the fleet's key."""
    workdir = tmp_path_factory.mktemp("trust")
    key = workdir / "id_ed25519"
    shutil.copy(fleet.key_file, key)
    key.chmod(0o600)
    inventory = yaml.safe_load(fleet.inventory.read_text())
    inventory["all"]["children"]["testfleet"]["vars"]["ansible_ssh_private_key_file"] = str(key)
    (workdir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return {"fleet": fleet, "key": key, "inventory": workdir / "hosts.yml", "workdir": workdir}


def rotate(env, *args):
    return ansible_playbook("rotate_trust.yml", env["inventory"], *args, env=env["fleet"].ansible_env())


def ssh_with(env, host, key, command="true", check=False) -> subprocess.CompletedProcess:
    """A fresh SSH login with exactly this key (no agent, no shared connection), running `command`."""
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
         "-o", "ControlPath=none", "-o", f"UserKnownHostsFile={env['fleet'].known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", f"root@{host.address}", command],
        capture_output=True, text=True, check=check)


def public_blob(private_key) -> str:
    return subprocess.run(["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def authorized_keys(env, key):
    return {h.name: ssh_with(env, h, key, "cat .ssh/authorized_keys", check=True).stdout for h in env["fleet"].hosts}


def test_a_partial_target_is_refused(env):
    before = env["key"].read_bytes()
    result = rotate(env, "--limit", env["fleet"].hosts[0].name)
    assert result.rc != 0
    assert "run on all of them, without --limit" in result.output
    assert env["key"].read_bytes() == before and not env["key"].with_name("id_ed25519.next").exists()


def test_check_mode_changes_nothing(env):
    before_key, before_keys = env["key"].read_bytes(), authorized_keys(env, env["key"])
    result = rotate(env, "--check", "--diff")
    assert result.rc == 0, result.output
    assert env["key"].read_bytes() == before_key and not env["key"].with_name("id_ed25519.next").exists()
    assert authorized_keys(env, env["key"]) == before_keys


def test_an_unreachable_host_stops_the_rotation_before_any_revocation(env):
    fleet, old = env["fleet"], env["key"]
    with fleet.unreachable(fleet.hosts[1]):
        result = rotate(env)
    assert result.rc != 0
    assert f"not revoking the old key: {fleet.hosts[1].name} did not take the next key" in result.output
    # The old key still logs in everywhere and is still the inventory's; the next one waits for a re-run.
    assert all(ssh_with(env, h, old).returncode == 0 for h in fleet.hosts)
    assert old.with_name("id_ed25519.next").exists()


def test_rotation_replaces_the_key_everywhere(env):
    fleet, key = env["fleet"], env["key"]
    retired = env["workdir"] / "retired_key"
    shutil.copy(key, retired)
    next_public = key.with_name("id_ed25519.next.pub").read_text().split()[1]

    result = rotate(env)  # finishes the rotation the unreachable host stopped
    assert result.rc == 0, result.output
    assert not key.with_name("id_ed25519.next").exists()
    assert key.read_bytes() != retired.read_bytes()
    assert key.with_name("id_ed25519.pub").read_text().split()[1] == next_public
    for host in fleet.hosts:
        assert ssh_with(env, host, key).returncode == 0
        refused = ssh_with(env, host, retired)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
    old_public = public_blob(retired)
    for keys in authorized_keys(env, key).values():
        assert keys.count(next_public) == 1 and old_public not in keys


def test_a_rotation_stopped_after_a_revocation_is_finished_by_the_next_run(env):
    """As if a run died half way: the next key authorized everywhere, the current one revoked on one host."""
    fleet, key = env["fleet"], env["key"]
    current = env["workdir"] / "current_key"
    shutil.copy(key, current)
    following = key.with_name("id_ed25519.next")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetdeck-controller",
                    "-f", str(following)], check=True)
    following_public = following.with_name("id_ed25519.next.pub").read_text().strip()
    current_public = public_blob(key)
    for host in fleet.hosts:
        edit = f"echo '{following_public}' >> .ssh/authorized_keys"
        if host is fleet.hosts[0]:
            edit += f" && sed -i '\\|{current_public}|d' .ssh/authorized_keys"
        ssh_with(env, host, key, edit, check=True)
    assert ssh_with(env, fleet.hosts[0], current).returncode != 0
    fleet.close_connections()  # the run must log in anew, not reuse a connection from earlier tests

    result = rotate(env)
    assert result.rc == 0, result.output
    assert not following.exists()
    assert public_blob(key) == following_public.split()[1]
    assert key.with_name("id_ed25519.pub").read_text().split()[1] == following_public.split()[1]
    for host in fleet.hosts:
        assert ssh_with(env, host, key).returncode == 0
        assert "Permission denied" in ssh_with(env, host, current).stderr
