"""Run real ansible-playbook commands from the repository root and read their recap."""

from __future__ import annotations

import os
import re
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


def ansible_playbook(playbook: str, inventory: Path | str, *args: str, env: dict[str, str] | None = None,
                     timeout: float = 900) -> PlaybookResult:
    """`ansible-playbook -i INVENTORY playbooks/PLAYBOOK ARGS...` with the project's ansible.cfg."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / playbook), *args]
    path = f"{BIN}:{os.environ['PATH']}"
    full_env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": path, **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    recap = {m[1]: dict(zip(("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"),
                            map(int, m.groups()[1:]), strict=True))
             for m in RECAP_RE.finditer(output)}
    return PlaybookResult(proc.returncode, output, recap)
