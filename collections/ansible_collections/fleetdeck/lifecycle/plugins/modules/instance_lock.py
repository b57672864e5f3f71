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
  - A lock older than O(stale_after) seconds is taken over, with a warning (its holder is presumed dead).
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
  pid:
    description: Process id of the controller's ansible-playbook, for the record.
    type: int
    default: 0
  stale_after:
    description: Seconds after which a lock is considered abandoned and may be taken over.
    type: int
    default: 3600
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
  sample: {"holder": "alice@ops1 upgrade", "pid": 4242, "started_at": 1763900000.5, "started": "2026-11-23T12:13:20Z"}
"""

import json
import os
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


def _describe(lock, now):
    age = int(now - float(lock.get("started_at", 0)))
    return f"{lock.get('holder', '?')} (pid {lock.get('pid', '?')}, since {lock.get('started', '?')}, {age}s ago)"


def _write_new(path, lock):
    """Create the lock file only if it does not exist: O_EXCL makes two takers race safely."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(lock, f)


def acquire(module, path, now):
    params = module.params
    lock = {"holder": params["holder"], "token": params["token"], "pid": params["pid"], "started_at": now,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    public = {k: v for k, v in lock.items() if k != "token"}
    found = _read(path)
    if found and found.get("token") == params["token"]:
        return {"changed": False, "lock": public}
    if found and now - float(found.get("started_at", 0)) < params["stale_after"]:
        module.fail_json(msg=f"instance is locked by {_describe(found, now)}; wait for it to finish, or if "
                             f"that run is dead release the lock: ansible-playbook playbooks/unlock.yml --limit "
                             f"<instance>", lock={k: v for k, v in found.items() if k != "token"})
    if module.check_mode:
        return {"changed": True, "lock": public}
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if found:
        module.warn(f"took over a stale lock held by {_describe(found, now)}")
        os.unlink(path)
    try:
        _write_new(path, lock)
    except FileExistsError:
        module.fail_json(msg=f"instance is locked by {_describe(_read(path) or {}, now)} (taken a moment ago)")
    return {"changed": True, "lock": public}


def release(module, path, now):
    found = _read(path)
    if found is None:
        return {"changed": False, "lock": {}}
    public = {k: v for k, v in found.items() if k != "token"}
    if found.get("token") != module.params["token"] and not module.params["force"]:
        module.warn(f"lock is held by {_describe(found, now)}, not by this run; left in place")
        return {"changed": False, "lock": public}
    if not module.check_mode:
        os.unlink(path)
    return {"changed": True, "lock": public}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "path": {"type": "path", "default": "/var/lib/fleetdeck/lock.json"},
            "holder": {"type": "str", "default": "unknown"},
            "token": {"type": "str", "required": True, "no_log": False},
            "pid": {"type": "int", "default": 0},
            "stale_after": {"type": "int", "default": 3600},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    action = acquire if module.params["state"] == "acquired" else release
    module.exit_json(**action(module, module.params["path"], time.time()))


if __name__ == "__main__":
    main()
