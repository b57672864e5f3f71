#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Per-instance deploy lock kept on the instance itself."""

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_lock
short_description: Take or release the per-instance lock of a mutating fleetdeck operation
description:
  - Keeps a small JSON lock file on the instance naming its holder, the controller process and the start time.
  - A second operation on a locked instance fails at once, naming the holder.
  - The action plugin of the same name fills in O(controller), O(pid) and O(pid_started) on the controller, and
    takes over a lock whose holder ran on this controller and whose process and task workers are gone
    (O(take_over)).
  - Only the holder (same O(token)) releases a lock, unless O(force=true).
version_added: "0.1.0"
author:
  - fleetdeck maintainers (@fleetdeck)
options:
  state:
    description: V(acquired) takes the lock, V(released) gives it back.
    type: str
    choices: [acquired, released]
    default: acquired
  path:
    description: Lock file on the instance.
    type: path
    default: /var/lib/fleetdeck/lock.json
  holder:
    description: Who takes the lock (operator, controller, playbook); shown to whoever finds the instance locked.
    type: str
    default: unknown
  token:
    description: Secretless random value identifying this run; releasing needs the same token.
    type: str
    required: true
  controller:
    description: Host name of the controller running the holder's ansible-playbook.
    type: str
    default: ''
  pid:
    description: Process id of the holder's ansible-playbook on O(controller).
    type: int
    default: 0
  pid_started:
    description: Start time of that process (clock ticks since boot), so that a reused pid is not taken for it.
    type: int
    default: 0
  command:
    description: sha256 of that process's command line, to recognise task workers it left behind.
    type: str
    default: ''
  take_over:
    description:
      - The lock of a holder known to be dead (as returned in RV(lock)); it is replaced by this run's lock if it
        is still the one on the instance. Any other lock is refused as usual.
    type: dict
  force:
    description: With O(state=released), remove the lock whoever holds it (for a stale lock).
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode the lock file is only read.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Take the instance lock
  fleetdeck.lifecycle.instance_lock:
    holder: "alice@ops1 upgrade"
    token: "{{ lock_token }}"

- name: Release a stale lock by hand
  fleetdeck.lifecycle.instance_lock:
    state: released
    token: manual
    force: true
"""

RETURN = r"""
lock:
  description: The lock as found or as written.
  returned: always
  type: dict
  sample: {"holder": "alice@ops1 upgrade", "controller": "ops1", "pid": 4242, "pid_started": 81234,
           "started_at": 1763900000.5, "started": "2026-11-23T12:13:20Z"}
took_over:
  description: The dead holder's lock this run replaced.
  returned: when a lock was taken over
  type: dict
locked:
  description: V(true) when another run holds the instance (the task failed; RV(lock) is that run's lock).
  returned: when refused
  type: bool
"""

import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"holder": "unreadable lock file", "started_at": 0}


def _public(lock):
    return {k: v for k, v in lock.items() if k != "token"}


def _describe(lock, now):
    age = int(now - float(lock.get("started_at", 0)))
    where = f"pid {lock.get('pid', '?')}" + (f" on {lock['controller']}" if lock.get("controller") else "")
    return f"{lock.get('holder', '?')} ({where}, since {lock.get('started', '?')}, {age}s ago)"


def _write_new(path, lock):
    """Create the lock file only if it does not exist, whole: written aside, then hard-linked into place.

    The link fails if the file exists, so two takers race safely, and no reader ever sees it empty.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".lock-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(lock, f)
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def acquire(module, path, now):
    params = module.params
    lock = {"holder": params["holder"], "token": params["token"], "controller": params["controller"],
            "pid": params["pid"], "pid_started": params["pid_started"], "command": params["command"],
            "started_at": now,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    found = _read(path)
    if found and found.get("token") == params["token"]:
        return {"changed": False, "lock": _public(found)}
    dead = found is not None and params["take_over"] is not None and _public(found) == params["take_over"]
    if found and not dead:
        module.fail_json(msg=f"instance is locked by {_describe(found, now)}; wait for it to finish, or if "
                             f"that run is dead release the lock: ansible-playbook playbooks/unlock.yml --limit "
                             f"<instance>", lock=_public(found), locked=True)
    result = {"changed": True, "lock": _public(lock)}
    if dead:
        result["took_over"] = _public(found)
    if module.check_mode:
        return result
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if dead:
        os.unlink(path)
    try:
        _write_new(path, lock)
    except FileExistsError:
        found = _read(path) or {}
        if found.get("token") == params["token"]:  # this run, taking it on another worker a moment ago
            return {"changed": False, "lock": _public(found)}
        module.fail_json(msg=f"instance is locked by {_describe(found, now)} (taken a moment ago)",
                         lock=_public(found), locked=True)
    return result


def release(module, path, now):
    found = _read(path)
    if found is None:
        return {"changed": False, "lock": {}}
    if found.get("token") != module.params["token"] and not module.params["force"]:
        module.warn(f"lock is held by {_describe(found, now)}, not by this run; left in place")
        return {"changed": False, "lock": _public(found)}
    if not module.check_mode:
        os.unlink(path)
    return {"changed": True, "lock": _public(found)}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "path": {"type": "path", "default": "/var/lib/fleetdeck/lock.json"},
            "holder": {"type": "str", "default": "unknown"},
            "token": {"type": "str", "required": True, "no_log": False},
            "controller": {"type": "str", "default": ""},
            "pid": {"type": "int", "default": 0},
            "pid_started": {"type": "int", "default": 0},
            "command": {"type": "str", "default": ""},
            "take_over": {"type": "dict"},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    action = acquire if module.params["state"] == "acquired" else release
    module.exit_json(**action(module, module.params["path"], time.time()))


if __name__ == "__main__":
    main()
