"""Fleets of 20+ hosts: the machine's inotify limits are raised first, or the exact setting is named."""

import ctypes
import os
import subprocess

import pytest

from tests.fleet import limits

INSTANCES, WATCHES = "fs.inotify.max_user_instances", "fs.inotify.max_user_watches"
FLEET_SIZE = 20


def fake_sysctl(root, instances, watches):
    (root / "fs" / "inotify").mkdir(parents=True)
    (root / "fs/inotify/max_user_instances").write_text(f"{instances}\n")
    (root / "fs/inotify/max_user_watches").write_text(f"{watches}\n")
    return root


def test_a_stock_limit_is_too_low_for_20_hosts_and_a_raised_one_is_not():
    idle = {INSTANCES: 0, WATCHES: 0}
    assert limits.plan(20, {INSTANCES: 128, WATCHES: 1048576}, idle) == {INSTANCES: (320, 640)}
    assert limits.plan(20, {INSTANCES: 8192, WATCHES: 1048576}, idle) == {}
    # What other fleets already hold counts too.
    assert limits.plan(20, {INSTANCES: 1024, WATCHES: 8192}, {INSTANCES: 900, WATCHES: 100}) == {
        INSTANCES: (1220, 2440), WATCHES: (20580, 41160)}


def test_ensure_raises_a_low_limit(tmp_path):
    sysctl = fake_sysctl(tmp_path, 128, 8192)
    changed = limits.ensure(50, sysctl, used={INSTANCES: 10, WATCHES: 200})
    assert changed == {INSTANCES: 2 * (10 + 50 * 16), WATCHES: 2 * (200 + 50 * 1024)}
    assert (sysctl / "fs/inotify/max_user_instances").read_text() == f"{changed[INSTANCES]}\n"
    assert limits.ensure(50, sysctl, used={INSTANCES: 10, WATCHES: 200}) == {}


def test_a_limit_that_cannot_be_raised_is_named_with_the_command(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root: a read-only bind mount stands in for a container's /proc/sys")
    sysctl = fake_sysctl(tmp_path / "sys", 128, 1048576)
    subprocess.run(["mount", "--bind", str(sysctl), str(sysctl)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(sysctl)], check=True)
        with pytest.raises(limits.LimitError) as raised:
            limits.ensure(20, sysctl, used={INSTANCES: 0, WATCHES: 0})
    finally:
        subprocess.run(["umount", str(sysctl)], check=True)
    message = str(raised.value)
    assert message.startswith("fs.inotify.max_user_instances is 128, too low for 20 more test hosts")
    assert "`sysctl -w fs.inotify.max_user_instances=640`" in message
    assert (sysctl / "fs/inotify/max_user_instances").read_text() == "128\n"


def test_in_use_counts_the_instances_and_watches_root_holds(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("counts root's inotify instances: run as root like the fleet tests")
    proc = tmp_path / "proc"  # a /proc that lists only this process
    proc.mkdir()
    (proc / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    libc = ctypes.CDLL(None, use_errno=True)
    before = limits.in_use(proc)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            assert libc.inotify_add_watch(fd, str(tmp_path / name).encode(), 0x100) >= 0  # IN_CREATE
        after = limits.in_use(proc)
    finally:
        os.close(fd)
    assert after[INSTANCES] - before[INSTANCES] == 1
    assert after[WATCHES] - before[WATCHES] == 2


@pytest.mark.fleet
def test_a_20_host_fleet_boots_and_every_host_answers(fleet):
    assert len(fleet.hosts) == FLEET_SIZE
    rows = fleet.status()
    assert [row["state"] for row in rows] == ["running"] * FLEET_SIZE, rows
    assert len({row["address"] for row in rows}) == FLEET_SIZE
