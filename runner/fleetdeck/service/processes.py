"""Find and stop every process of a run, by the FLEETDECK_RUN_SOURCE marker in its environment.

ansible-runner starts ansible-playbook as a session leader; its forks and ssh clients share its process
group. Scanning /proc for the marker finds them all, also after a runner crash when no pid was kept
anywhere. ssh ControlPersist masters (`ssh: <path> [mux]`) inherit the marker but are connection caches
shared with later runs, so they are left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def run_marker(run_id: str) -> str:
    return f"runner:{run_id}"


def _is_mux_master(proc: Path) -> bool:
    cmdline = (proc / "cmdline").read_bytes().rstrip(b"\0")
    return cmdline.startswith(b"ssh: ") and cmdline.endswith(b"[mux]")


def process_groups(run_id: str) -> set[int]:
    needle = f"FLEETDECK_RUN_SOURCE={run_marker(run_id)}\0".encode()
    own = os.getpgrp()
    groups = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes() + b"\0" and not _is_mux_master(proc):
                pgid = os.getpgid(int(proc.name))
                if pgid != own:
                    groups.add(pgid)
    return groups


def signal_run(run_id: str, signum: int) -> set[int]:
    groups = process_groups(run_id)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
    return groups


def stop_run(run_id: str, grace: float) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL whatever is left."""
    if not signal_run(run_id, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_groups(run_id):
            return
        time.sleep(0.1)
    signal_run(run_id, signal.SIGKILL)
