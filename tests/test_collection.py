"""The fleetdeck.lifecycle collection passes `ansible-test sanity` and `ansible-test units`, without docker.

The sanity venvs are built by scripts/setup; the GPLv3 header check is ignored for the MIT-licensed plugins in
the collection's tests/sanity/ignore-2.19.txt, with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COLLECTION = Path(__file__).resolve().parents[1] / "collections" / "ansible_collections" / "fleetdeck" / "lifecycle"
ANSIBLE_TEST = Path(sys.executable).parent / "ansible-test"


@pytest.mark.parametrize("command", ["sanity", "units"])
def test_ansible_test(command):
    proc = subprocess.run(
        [str(ANSIBLE_TEST), command, "--local", "--python", "3.11", "--color", "no"],
        cwd=COLLECTION, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-20000:]
