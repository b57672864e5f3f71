"""The test fleet itself: separate hosts with systemd, reachable over SSH with host keys checked."""

import subprocess
from pathlib import Path

from tests.fleet import Fleet
from tests.playbook import BIN, REPO, ansible_playbook

FLEET_SIZE = 5


def test_hosts_are_distinct_and_running(fleet):
    rows = fleet.status()
    assert [r["state"] for r in rows] == ["running"] * FLEET_SIZE
    assert len({r["name"] for r in rows}) == FLEET_SIZE
    assert len({r["address"] for r in rows}) == FLEET_SIZE
    hostnames = {fleet.ssh(h, "hostname").stdout.strip() for h in fleet.hosts}
    assert hostnames == {h.name for h in fleet.hosts}
    assert fleet.ssh(fleet.hosts[0], "ps -p 1 -o comm=").stdout.strip() == "systemd"


def test_each_host_has_its_own_filesystem(fleet):
    first, *others = fleet.hosts
    fleet.ssh(first, "mkdir -p /opt/fleetdeck-probe && echo only-here > /opt/fleetdeck-probe/file")
    assert fleet.ssh(first, "cat /opt/fleetdeck-probe/file").stdout == "only-here\n"
    for host in others:
        assert fleet.ssh(host, "test -e /opt/fleetdeck-probe", check=False).returncode == 1
    assert not Path("/opt/fleetdeck-probe").exists()


def test_host_keys_are_checked(fleet, tmp_path):
    wrong = tmp_path / "known_hosts"
    host = fleet.hosts[0]
    other_key = (fleet.dir / "known_hosts").read_text().splitlines()[1].split(" ", 1)[1]
    wrong.write_text(f"{host.address} {other_key}\n")
    proc = subprocess.run(["ssh", "-i", str(fleet.key_file), "-o", f"UserKnownHostsFile={wrong}",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                           f"root@{host.address}", "true"], capture_output=True, text=True)
    assert proc.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr


def test_smoke_playbook_reports_every_host(fleet):
    result = ansible_playbook("smoke_check.yml", fleet.inventory, env=fleet.ansible_env())
    assert result.rc == 0, result.output
    for host in fleet.hosts:
        assert result.recap[host.name]["failed"] == 0
        assert f"{host.name:<16} {host.address:<15} n/a" in result.output
    assert f"{FLEET_SIZE} instances, {FLEET_SIZE} answered" in result.output


def test_cli_up_status_down_leaves_nothing_behind():
    cli = [str(BIN / "python"), "-m", "tests.fleet"]
    name = "clit"
    up = subprocess.run([*cli, "up", "2", "--name", name], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    status = subprocess.run([*cli, "status", "--name", name], cwd=REPO, capture_output=True, text=True)
    assert status.stdout.count("running") == 2, status.stdout
    down = subprocess.run([*cli, "down", "--name", name], cwd=REPO, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(Fleet(name))


def test_down_cleans_up_after_a_crashed_run():
    crashed = Fleet("crash")
    crashed.up(1)
    crashed.hosts, crashed._launchers = [], {}  # forget everything, as a dead process would
    (crashed.dir / "fleet.json").unlink()
    Fleet("crash").down()
    assert_nothing_left(crashed)


def assert_nothing_left(fleet: Fleet) -> None:
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    assert f"fleetdeck-{fleet.name}-" not in out("ip", "netns", "list")
    assert f"fdv-{fleet.name}-" not in out("ip", "link") and fleet.bridge not in out("ip", "link")
    assert str(fleet.dir) not in out("cat", "/proc/mounts")
    assert not fleet.dir.exists()
    live = [line for line in out("ps", "-eo", "stat=,args=").splitlines()
            if str(fleet.dir) in line and not line.startswith("Z")]
    assert live == []
    assert not list(Path("/sys/fs/cgroup/systemd").glob(f"fleetdeck/{fleet.name}-*"))
