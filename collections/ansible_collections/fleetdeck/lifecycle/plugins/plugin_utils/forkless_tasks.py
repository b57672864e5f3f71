# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Host-tasks settled in the strategy's own process instead of a forked worker: those whose conditional is false
(skip_result), and those whose action runs on the controller alone and at once (runs_on_controller). What is
settled here, what still forks and why is described once, in the mitogen_linear strategy's DOCUMENTATION.
Either way the worker's own result goes through the same results queue, so callbacks, register, handlers and
the recap cannot tell the difference.
"""

from __future__ import annotations

import re

from ansible._internal import _display_utils, _task
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.plugins import loader as plugin_loader

CONTROLLER_ACTIONS = frozenset(f"ansible.builtin.{name}" for name in (
    "set_fact", "assert", "debug", "fail", "validate_argument_spec", "include_tasks", "include_role"))
LOOKUP_CALL = re.compile(r"\b(lookup|query|q)\s*\(")


def skip_result(task, task_vars):
    """The worker's result for TASK on these TASK_VARS when it would be skipped silently, else None."""
    if not task.when or task.loop is not None or task.loop_with or task.delegate_to:
        return None
    variables = dict(task_vars)
    # As the worker sets it before it evaluates the conditional, for lookups with relative paths.
    search_path = task.get_search_path()
    if task._loader.get_basedir() not in search_path:
        search_path.append(task._loader.get_basedir())
    variables["ansible_search_path"] = search_path
    result = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}
    try:
        with _display_utils.DeferredWarningContext(variables=variables) as warnings, _task.TaskContext(task):
            if task._resolve_conditional(task.when, variables, result_context=result):
                return None
            task.update_result_no_log(TemplateEngine(task._loader, variables=variables), result)
    except Exception:  # the worker reports it, as without this
        return None
    if warnings.get_warnings() or warnings.get_deprecation_warnings():
        return None
    return result


def runs_on_controller(task):
    """Whether TASK's action needs neither the host nor time, so that a worker would only add a fork."""
    if task.action not in CONTROLLER_ACTIONS or task.delegate_to or task.loop_with:
        return False
    if task.until or task.retries is not None or task.async_val or task.timeout or task.loop_control.pause:
        return False
    return not LOOKUP_CALL.search(repr((task.args, task.loop, task.when, task.vars)))


class ForklessTasks:
    """Strategy mixin: put it before the strategy class whose _queue_task it short-circuits."""

    def _queue_task(self, host, task, task_vars, play_context):
        if runs_on_controller(task):
            # What WorkerProcess._run does in its fork, on copies of what TaskExecutor changes in place.
            own_task = task.copy(exclude_tasks=True)
            self._announce(host, task, task_vars, play_context)
            result = TaskExecutor(host, own_task, dict(task_vars), play_context, self._loader,
                                  plugin_loader.get_plugin_loader_namespace(), self._final_q,
                                  self._variable_manager).run()
            return self._settle(host, task, result, own_task.dump_attrs())
        result = skip_result(task, task_vars)
        if result is None:
            return super()._queue_task(host, task, task_vars, play_context)
        self._announce(host, task, task_vars, play_context)
        return self._settle(host, task, result, task.dump_attrs())

    def _announce(self, host, task, task_vars, play_context):
        # What a worker's result is matched with, as StrategyBase._queue_task records it.
        self._queued_task_cache[(host.name, task._uuid)] = {"host": host, "task": task, "task_vars": task_vars,
                                                            "play_context": play_context}
        self._tqm.send_callback("v2_runner_on_start", host, task)

    def _settle(self, host, task, result, task_fields):
        self._final_q.send_task_result(_RawTaskResult(host=host, task=task, return_data=result,
                                                      task_fields=task_fields))
        self._pending_results += 1
