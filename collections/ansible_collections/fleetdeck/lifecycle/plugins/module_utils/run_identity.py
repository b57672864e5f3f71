# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""Which ansible-playbook run is which: the identity the instance lock and the audit log both record."""

from __future__ import annotations


def process_started(pid):
    """Start time of a process on this machine (clock ticks since boot), None when it does not run."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count from its end.
    return int(stat.rsplit(")", 1)[1].split()[19])


def run_id(controller, pid, started):
    """One ansible-playbook process: its controller, pid and start time (a reused pid gets a new id)."""
    return f"{controller}/{pid}/{started}"


def is_dead(controller, pid, started, this_controller):
    """Provably dead: it ran on this controller and that process no longer runs (nor under a reused pid)."""
    if controller != this_controller or not pid or pid <= 0 or not started or started <= 0:
        return False
    return process_started(pid) != started
