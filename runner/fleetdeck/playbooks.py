"""Run one of the project's playbooks on an environment from Python (import-instance, drift)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run(env: Path, playbook: str, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, int]]:
    """`ansible-playbook -i ENV playbooks/PLAYBOOK ARGS` from the repository root (for its ansible.cfg);
    returns the process and each host's changed count from the recap."""
    binary = REPO / ".venv" / "bin" / "ansible-playbook"
    cmd = [str(binary if binary.exists() else "ansible-playbook"), "-i", str(env),
           str(REPO / "playbooks" / playbook), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return proc, {m.group(1): int(m.group(2)) for m in RECAP.finditer(proc.stdout)}
