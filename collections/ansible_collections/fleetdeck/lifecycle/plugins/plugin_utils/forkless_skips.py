# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Host-tasks whose conditional is false, settled in the strategy's own process instead of a forked worker.

ansible-core forks a worker for every host-task, skipped ones included; the worker finds the task skipped
before it connects to the host, so the fork is nearly all that a skipped host-task costs. For a task with no
loop and no delegation, this evaluates the conditional before forking, with the call and the variables the
worker would use. When it is false, and the evaluation raised and warned nothing, the worker's own skip result
goes through the same results queue, so callbacks, C(register) and the recap cannot tell the difference.
Anything else goes to a worker as before.
"""

from __future__ import annotations

from ansible._internal import _display_utils, _task
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_result import _RawTaskResult


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


class ForklessSkips:
    """Strategy mixin: put it before the strategy class whose _queue_task it short-circuits."""

    def _queue_task(self, host, task, task_vars, play_context):
        result = skip_result(task, task_vars)
        if result is None:
            return super()._queue_task(host, task, task_vars, play_context)
        # What a worker's result is matched with, as StrategyBase._queue_task records it.
        self._queued_task_cache[(host.name, task._uuid)] = {"host": host, "task": task, "task_vars": task_vars,
                                                            "play_context": play_context}
        self._tqm.send_callback("v2_runner_on_start", host, task)
        self._final_q.send_task_result(_RawTaskResult(host=host, task=task, return_data=result,
                                                      task_fields=task.dump_attrs()))
        self._pending_results += 1
        return None
