"""Kernel limits a fleet of systemd hosts needs on the machine.

Every host's systemd (and journald, udevd, ...) holds inotify instances and watches of root, counted
against root's per-user limits for the whole machine. With the common default
fs.inotify.max_user_instances = 128 the ~20th host of a fleet dies while booting, with an empty console.
`ensure` raises the limits before a fleet starts, or stops with the exact setting to change.
"""

from __future__ import annotations

import os
from pathlib import Path

# Per host: about 6 instances and 24 watches measured on an idle host; a deployed one runs more services.
PER_HOST = {"fs.inotify.max_user_instances": 16, "fs.inotify.max_user_watches": 1024}
INOTIFY = "anon_inode:inotify"


class LimitError(RuntimeError):
    pass


def in_use(proc: Path = Path("/proc")) -> dict[str, int]:
    """inotify instances and watches root holds now, machine-wide (other fleets included)."""
    instances = watches = 0
    for fd in proc.glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) != INOTIFY or fd.parent.parent.stat().st_uid != 0:
                continue
            info = (fd.parent.parent / "fdinfo" / fd.name).read_text()
        except OSError:  # the process or descriptor went away meanwhile
            continue
        instances += 1
        watches += info.count("inotify wd:")
    return {"fs.inotify.max_user_instances": instances, "fs.inotify.max_user_watches": watches}


def plan(hosts: int, limits: dict[str, int], used: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Settings too low for `hosts` more hosts: setting -> (needed, value to set).

    The value set is twice what is needed, leaving room for fleets that start at the same time.
    """
    raises = {}
    for setting, per_host in PER_HOST.items():
        needed = used.get(setting, 0) + hosts * per_host
        if limits[setting] < needed:
            raises[setting] = (needed, 2 * needed)
    return raises


def ensure(hosts: int, sysctl: Path = Path("/proc/sys"), used: dict[str, int] | None = None) -> dict[str, int]:
    """Raise the inotify limits for `hosts` more hosts; returns what was set. Raises LimitError naming the
    setting when it cannot be written (not root, a read-only /proc/sys in a container)."""
    files = {setting: sysctl / setting.replace(".", "/") for setting in PER_HOST}
    limits = {setting: int(path.read_text()) for setting, path in files.items()}
    changed = {}
    for setting, (needed, value) in plan(hosts, limits, in_use() if used is None else used).items():
        try:
            files[setting].write_text(f"{value}\n")
        except OSError as exc:
            raise LimitError(
                f"{setting} is {limits[setting]}, too low for {hosts} more test hosts (about {needed} needed), "
                f"and it cannot be raised here ({exc.strerror or exc}): as root, run "
                f"`sysctl -w {setting}={value}` (add it to /etc/sysctl.d/ to keep it)") from None
        changed[setting] = value
    return changed
