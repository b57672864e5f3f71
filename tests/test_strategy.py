"""fleetdeck.lifecycle.mitogen_linear, the strategy ansible.cfg selects: plays run over Mitogen when it is
installed, and over the stock linear strategy with one notice when Mitogen cannot be imported or refuses
this ansible-core."""

import os
import re
import subprocess

import pytest

from tests.playbook import BIN, REPO

FLEET_SIZE = 1
pytestmark = pytest.mark.fleet
NOTICE = "Mitogen is not used"
# Two plays (one notice per run, not per play); the first prints what started the task's shell.
PLAYBOOK = """\
- name: Show what runs the modules
  hosts: all
  gather_facts: false
  tasks:
    - name: Name the shell's parent process
      ansible.builtin.shell: ps -o args= -p $PPID
      register: parent
      changed_when: false
    - name: Print it
      ansible.builtin.debug:
        msg: "parent: {{ parent.stdout }}"
- name: A second play
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""
# What a Python path entry placed before site-packages makes of `import ansible_mitogen...`.
SHADOWS = {
    "not installed": {"ansible_mitogen.py": "raise ImportError('No module named ansible_mitogen')\n"},
    "unsupported ansible-core": {
        "ansible_mitogen/__init__.py": "",
        "ansible_mitogen/loaders.py": "import ansible.errors\n"
                                      "raise ansible.errors.AnsibleError('Your version of Ansible is too recent')\n",
    },
}


def run(fleet, tmp_path, extra_env=None) -> subprocess.CompletedProcess:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PLAYBOOK)
    env = {**os.environ, **fleet.ansible_env(), "ANSIBLE_FORCE_COLOR": "0", **(extra_env or {})}
    env.pop("ANSIBLE_CONFIG", None)  # the repository's ansible.cfg, as operators run it
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(fleet.inventory), str(playbook)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_plays_run_over_mitogen_when_it_is_installed(fleet, tmp_path):
    proc = run(fleet, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parent: /usr/bin/python3(mitogen:" in proc.stdout, proc.stdout
    assert NOTICE not in proc.stdout + proc.stderr


@pytest.mark.parametrize("case", SHADOWS)
def test_stock_linear_with_one_notice_when_mitogen_cannot_be_used(fleet, tmp_path, case):
    shadow = tmp_path / "shadow"
    for name, text in SHADOWS[case].items():
        (shadow / name).parent.mkdir(parents=True, exist_ok=True)
        (shadow / name).write_text(text)
    proc = run(fleet, tmp_path, {"PYTHONPATH": str(shadow)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert output.count(NOTICE) == 1, output
    notice = next(line for line in output.splitlines() if NOTICE in line)
    assert ("ImportError" if case == "not installed" else "AnsibleError: Your version of Ansible is too recent") \
        in notice
    assert "parent: /usr/bin/python3" in proc.stdout and "mitogen:" not in proc.stdout, proc.stdout
    assert re.search(r"ok=3\s+changed=0\s+unreachable=0\s+failed=0", proc.stdout), proc.stdout
