# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""Controller side of fleetdeck.lifecycle.instance_lock: who is taking the lock, and is a holder dead."""

from __future__ import annotations

import os
import socket

from ansible.plugins.action import ActionBase
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.run_identity import (
    command_digest,
    is_dead,
    process_started,
)

MODULE = "fleetdeck.lifecycle.instance_lock"


class ActionModule(ActionBase):
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("state", "acquired") != "acquired":
            return self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        controller, own = socket.gethostname(), os.getppid()  # task workers are forks of ansible-playbook
        if "pid" not in args:  # given by hand: a holder this controller cannot vouch for
            args.update(controller=controller, pid=own, pid_started=process_started(own) or 0,
                        command=command_digest(own))
        found = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        if found.get("locked") and is_dead(found["lock"], controller, own):
            found = self._execute_module(MODULE, module_args=dict(args, take_over=found["lock"]), task_vars=task_vars)
            if found.get("took_over"):
                dead = found["took_over"]
                self._display.warning(f"{task_vars.get('inventory_hostname')}: took over the lock of {dead['holder']}"
                                      f" (pid {dead['pid']} on {controller} no longer runs)")
        result.update(found)
        return result
