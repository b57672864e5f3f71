"""Baseline: stock Ansible settings versus fleetdeck's ansible.cfg on 1, 5 and 20 real fleet hosts.

Run as root from the repository root:  .venv/bin/python -m tests.bench.ansible_settings
Prints wall seconds, host-tasks per second (3 tasks + fact gathering per host) and the speed-up.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fleet import Fleet
from tests.playbook import BIN, REPO

PLAYBOOK = Path(__file__).with_name("settings_playbook.yml")
SIZES = (1, 5, 20)
TASKS_PER_HOST = 4  # fact gathering + 3 tasks


def run(fleet: Fleet, config: Path, hosts: int) -> float:
    limit = ",".join(h.name for h in fleet.hosts[:hosts])
    env = {**os.environ, **fleet.ansible_env(), "ANSIBLE_CONFIG": str(config)}
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(fleet.inventory), "--limit", limit,
                           str(PLAYBOOK)], cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"benchmark run failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    fleet = Fleet("bench")
    with tempfile.TemporaryDirectory() as tmp:
        stock = Path(tmp) / "stock.cfg"
        stock.write_text("[defaults]\n")  # every setting at Ansible's default (forks 5, no pipelining)
        try:
            fleet.up(max(SIZES))
            run(fleet, REPO / "ansible.cfg", max(SIZES))  # first contact: warm page cache and sshd
            print(f"{'hosts':>5} {'stock s':>9} {'fleetdeck s':>12} {'stock t/s':>10} {'fleetdeck t/s':>14} "
                  f"{'speed-up':>9}")
            for size in SIZES:
                base, tuned = run(fleet, stock, size), run(fleet, REPO / "ansible.cfg", size)
                work = size * TASKS_PER_HOST
                print(f"{size:>5} {base:>9.1f} {tuned:>12.1f} {work / base:>10.1f} {work / tuned:>14.1f} "
                      f"{base / tuned:>8.2f}x")
        finally:
            fleet.down()


if __name__ == "__main__":
    main()
