# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""Which ansible-playbook run is which: the identity the instance lock and the audit log both record."""

from __future__ import annotations

import hashlib
import os


def _stat(pid):
    """(parent pid, start time in clock ticks since boot) of a process on this machine, None when it does not run."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    # Fields 4 and 22; the command name (field 2) may hold spaces and parentheses, so count from its end.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def process_started(pid):
    """Start time of a process (clock ticks since boot), None when it does not run."""
    stat = _stat(pid)
    return stat[1] if stat else None


def command_digest(pid):
    """sha256 of a process's command line: recognises its task workers without recording its arguments."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, ValueError):
        return ""


def run_id(controller, pid, started):
    """One ansible-playbook process: its controller, pid and start time (a reused pid gets a new id)."""
    return f"{controller}/{pid}/{started}"


def is_dead(lock, this_controller, own_pid):
    """Provably dead: the holder ran on this controller, its ansible-playbook no longer runs (nor under a reused
    pid), and no task worker it forked is left (a worker outlives a killed parent until its task ends)."""
    pid, started, digest = lock.get("pid") or 0, lock.get("pid_started") or 0, lock.get("command") or ""
    if lock.get("controller") != this_controller or pid <= 0 or started <= 0 or not digest:
        return False
    if process_started(pid) == started:
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own_pid:
            continue
        stat = _stat(entry)
        if stat and stat[0] != own_pid and stat[1] >= started and command_digest(entry) == digest:
            return False
    return True
