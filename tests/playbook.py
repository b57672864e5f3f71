"""Run real ansible-playbook commands from the repository root and read their recap."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                      r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


@dataclass
class PlaybookResult:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}


def start_playbook(playbook: str, inventory: Path | str, *args: str, env: dict[str, str] | None = None,
                   ) -> subprocess.Popen:
    """`ansible-playbook -i INVENTORY playbooks/PLAYBOOK ARGS...` with the project's ansible.cfg, started."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / playbook), *args]
    path = f"{BIN}:{os.environ['PATH']}"
    full_env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": path, **(env or {})}
    # A session of its own, so a timeout stops its workers and ssh too (killpg below).
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def ansible_playbook(playbook: str, inventory: Path | str, *args: str, env: dict[str, str] | None = None,
                     timeout: float = 900) -> PlaybookResult:
    """`ansible-playbook -i INVENTORY playbooks/PLAYBOOK ARGS...` run to its end."""
    return finished(start_playbook(playbook, inventory, *args, env=env), timeout)


def finished(proc: subprocess.Popen, timeout: float = 900) -> PlaybookResult:
    """Wait for a started ansible-playbook and read its recap."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    output = stdout + stderr
    recap = {m[1]: dict(zip(("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"),
                            map(int, m.groups()[1:]), strict=True))
             for m in RECAP_RE.finditer(output)}
    return PlaybookResult(proc.returncode, output, recap)
