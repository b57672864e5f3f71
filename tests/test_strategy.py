"""fleetdeck.lifecycle.mitogen_linear, the strategy ansible.cfg selects: plays run over Mitogen when it is
installed, and over the stock linear strategy with one notice when Mitogen cannot be imported or refuses
this ansible-core."""

import json
import re
import subprocess

import pytest

from tests.playbook import finished, start_playbook

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
    proc = start_playbook(str(playbook), fleet.inventory, env={**fleet.ansible_env(), **(extra_env or {})})
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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


def shown_registered(output: str):
    """The value printed by a playbook's debug task with msg "registered: <json>"."""
    (line,) = [line for line in output.splitlines() if '"msg": "registered: ' in line]
    return json.loads(json.loads("{" + line + "}")["msg"].removeprefix("registered: "))


def processes(path) -> set[int]:
    """The process ids a probe wrote to PATH, one per line."""
    return {int(pid) for pid in path.read_text().split()}


# The conditional's pipe lookup records which process evaluated it: its shell's parent.
SKIPS = """\
- name: Skip without a worker
  hosts: all
  gather_facts: false
  vars:
    run_it: false
  tasks:
    - name: Skipped and registered
      ansible.builtin.command: "false"
      register: skipped
      when: lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ evaluators) is string and run_it
    - name: Skipped in a loop, item by item
      ansible.builtin.command: "false"
      loop: [1]
      when: run_it
    - name: Show the registered result
      ansible.builtin.debug:
        msg: "registered: {{ skipped | to_json }}"
    - name: A conditional that fails
      ansible.builtin.command: "true"
      when: no_such_variable
"""


@pytest.mark.parametrize("strategy", ["fleetdeck.lifecycle.mitogen_linear", "linear"])
def test_a_false_conditional_skips_without_forking_a_worker(fleet, tmp_path, strategy):
    """Skipped host-tasks are settled in ansible-playbook itself, with the result a worker would give: the
    stock linear strategy, which forks a worker for each, is the reference."""
    playbook = tmp_path / "skips.yml"
    playbook.write_text(SKIPS)
    evaluators = tmp_path / "evaluators"
    proc = start_playbook(str(playbook), fleet.inventory, "-e", f"evaluators={evaluators}",
                          env={**fleet.ansible_env(), "ANSIBLE_STRATEGY": strategy,
                               "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "true", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    output = finished(proc, timeout=300).output
    assert proc.returncode == 2, output
    assert shown_registered(output) == {
        "changed": False, "false_condition": "lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ evaluators) is "
                                             "string and run_it",
        "skip_reason": "Conditional result was False", "skipped": True}
    assert re.search(r"skipping: \[\S+\] => \(item=1\)", output), output
    assert "'no_such_variable' is undefined" in output
    assert re.search(r"ok=1\s+changed=0\s+unreachable=0\s+failed=1\s+skipped=2", output), output
    evaluated_by = processes(evaluators)
    assert (evaluated_by == {proc.pid}) is (strategy != "linear"), (evaluated_by, proc.pid)


# Controller-only actions: the record_process filter (written next to the playbook) notes which process templated
# the value. A lookup would send the task to a worker, so the probe is a filter.
CONTROLLER_TASKS = """\
- name: Controller-only actions without a worker
  hosts: all
  gather_facts: false
  tasks:
    - name: Set a fact in a loop
      ansible.builtin.set_fact:
        numbers: "{{ (numbers | default([])) + [item * 2 | record_process(evaluators)] }}"
      loop: [1, 2, 3]
      register: looped
    - name: An assertion that holds
      ansible.builtin.assert:
        that: numbers == [2, 4, 6]
        quiet: true
    - name: An assertion that fails, ignored
      ansible.builtin.assert:
        that: numbers == []
        fail_msg: "numbers are {{ numbers }}"
      register: failed_assert
      ignore_errors: true
    - name: Changed when told
      ansible.builtin.debug:
        msg: "numbers: {{ numbers }}"
      changed_when: true
      register: shown
    - name: Include tasks per item
      ansible.builtin.include_tasks: included.yml
      loop: [a, b]
    - name: Show what was registered
      ansible.builtin.debug:
        msg: "registered: {{ {'looped': looped, 'assert': failed_assert, 'shown': shown, 'included': included}
          | to_json }}"
    - name: Fail
      ansible.builtin.fail:
        msg: stop here
"""
INCLUDED = """\
- name: Collect the item
  ansible.builtin.set_fact:
    included: "{{ (included | default([])) + [item | record_process(evaluators)] }}"
"""
RECORD_PROCESS = """\
import os


class FilterModule:
    def filters(self):
        return {"record_process": record_process}


def record_process(value, path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return value
"""


# profile_tasks' lines, and the notice that a strategy outside ansible.builtin is used.
TIMINGS = re.compile(r"\d:\d\d:\d\d\.\d+|\d\.\d\ds$|DEPRECATION|Deprecation warnings")


def test_controller_only_actions_run_without_forking_a_worker(fleet, tmp_path):
    """set_fact, assert, debug, fail and include_tasks run in ansible-playbook itself, with the output, the
    registered results and the recap of stock linear, which forks a worker for each host-task."""
    (tmp_path / "filter_plugins").mkdir()
    (tmp_path / "filter_plugins" / "record.py").write_text(RECORD_PROCESS)
    (tmp_path / "included.yml").write_text(INCLUDED)
    playbook = tmp_path / "controller.yml"
    playbook.write_text(CONTROLLER_TASKS)
    runs = {}
    for strategy in ("fleetdeck.lifecycle.mitogen_linear", "linear"):
        evaluators = tmp_path / f"evaluators-{strategy}"
        proc = start_playbook(str(playbook), fleet.inventory, "-e", f"evaluators={evaluators}",
                              env={**fleet.ansible_env(), "ANSIBLE_STRATEGY": strategy,
                                   "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        output = finished(proc, timeout=300).output
        assert proc.returncode == 2, output
        assert re.search(r"ok=9\s+changed=1\s+unreachable=0\s+failed=1\s+skipped=0\s+rescued=0\s+ignored=1",
                         output), output
        runs[strategy] = [line for line in output.splitlines() if not TIMINGS.search(line)]
        evaluated_by = processes(evaluators)
        assert (evaluated_by == {proc.pid}) is (strategy != "linear"), (evaluated_by, proc.pid)
    assert runs["fleetdeck.lifecycle.mitogen_linear"] == runs["linear"]
    registered = shown_registered("\n".join(runs["linear"]))
    assert [item["ansible_facts"]["numbers"] for item in registered["looped"]["results"]] == [[2], [2, 4], [2, 4, 6]]
    assert registered["assert"]["failed"] and registered["assert"]["msg"] == "numbers are [2, 4, 6]"
    assert registered["shown"]["changed"] and registered["included"] == ["a", "b"]
