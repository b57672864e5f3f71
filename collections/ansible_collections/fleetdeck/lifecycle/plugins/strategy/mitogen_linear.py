# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
name: mitogen_linear
short_description: The linear strategy over Mitogen when it is installed and supported, else stock linear
version_added: 0.1.0
description:
  - Runs plays exactly like M(ansible.builtin.linear) (task by task across the hosts, C(serial) batches,
    handlers), but through Mitogen's persistent connections when the C(mitogen) Python package is
    importable and accepts this ansible-core. Mitogen keeps one SSH connection and one Python process
    per host for the whole play and runs modules in that process instead of a fresh interpreter per task.
  - When Mitogen cannot be imported or refuses this ansible-core, it prints one notice saying why and
    runs the stock M(ansible.builtin.linear) strategy.
  - Mitogen compiles every Python module it sends to a host, in every run, only to read its imports, and
    minifies its own modules before sending them. This strategy keeps those import lists and minified sources
    in C($XDG_CACHE_HOME/fleetdeck/mitogen) (by default C(~/.cache/fleetdeck/mitogen)), one small file per
    module version keyed by a hash of its source, so that later runs skip that work. Deleting the directory
    only costs the next run that time.
  - Mitogen lists the installed collections, loading the metadata of each, in every task worker that runs a
    collection module. This strategy lists them once per play, before it forks the workers, and Mitogen uses
    that list.
  - The hosts compile the same modules again in every run, as source from the controller. In each new Mitogen
    context this strategy first installs a cache of their compiled code (marshal) in
    C(~/.cache/fleetdeck/mitogen-code) of the account the context runs as, on that host, about 2 MB per
    version of the modules. A directory others could enter is not used. Sources hold no task arguments.
  - With or without Mitogen, ansible-core compiles a Jinja template each time it renders one, in the worker
    it forks for each host-task. This strategy keeps the compiled code of templates read from plain files in
    C($XDG_CACHE_HOME/fleetdeck/jinja-code) (by default C(~/.cache/fleetdeck/jinja-code)), keyed by a hash
    of the template and of the settings it was compiled with, so that later workers and runs load it instead.
    Templates from vault-encrypted files, and any without a file of origin, are cached in memory only, so that
    no secret written in a template's text lands on disk.
  - With or without Mitogen, ansible-core forks a worker for every host-task, also for one it then skips. For a
    task with no loop and no delegation, this strategy evaluates the C(when) conditional before forking, with
    the same call and variables as the worker; when it is false, and raised and warned nothing, it hands the
    worker's skip result to Ansible's result processing without forking, so callbacks, C(register) and the
    recap see the same result. Any other task, or a conditional that fails or warns, goes to a worker. A
    conditional that holds is evaluated again in the worker, so a lookup in it runs twice.
  - Likewise, a host-task whose action runs on the controller alone (M(ansible.builtin.set_fact),
    M(ansible.builtin.assert), M(ansible.builtin.debug), M(ansible.builtin.fail),
    M(ansible.builtin.validate_argument_spec), M(ansible.builtin.include_tasks), M(ansible.builtin.include_role),
    named by these FQCNs) runs in this process, through the worker's own task executor, on copies of the task
    and its variables. Tasks that may wait (C(until), C(retries), C(async), C(timeout), a loop C(pause)), that
    name a lookup in their arguments, loop, conditional or C(vars), that are delegated or use C(with_*), still
    go to a worker, so that a slow one does not hold up the others. A lookup reached through a variable, such
    as a role default, runs in this process.
  - To run without Mitogen although it is installed, choose the stock strategy, for example
    E(ANSIBLE_STRATEGY=linear).
requirements:
  - Optional, for the speed-up, C(mitogen) (fleetdeck pins it in pyproject.toml).
  - Select it with C(strategy = fleetdeck.lifecycle.mitogen_linear) in ansible.cfg.
author:
  - fleetdeck maintainers (@fleetdeck)
"""

from ansible.errors import AnsibleError
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible.utils.display import Display
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import jinja_code_cache, mitogen_import_cache
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils.forkless_tasks import ForklessTasks

display = Display()
jinja_code_cache.install()

try:
    # ansible_mitogen.loaders raises AnsibleError on import when it does not support this ansible-core.
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except (ImportError, AnsibleError) as exc:
    MITOGEN_UNAVAILABLE = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
else:
    MITOGEN_UNAVAILABLE = ""

if MITOGEN_UNAVAILABLE:
    _noticed = False

    class StrategyModule(ForklessTasks, LinearStrategy):
        def run(self, iterator, play_context):
            global _noticed  # one notice per ansible-playbook run, not one per play
            if not _noticed:
                _noticed = True
                display.warning(f"Mitogen is not used ({MITOGEN_UNAVAILABLE}); running the stock linear strategy")
            return super().run(iterator, play_context)

else:
    # Before Mitogen's connection process forks from this one, so that it inherits the cache.
    mitogen_import_cache.install()

    class StrategyModule(ForklessTasks, ansible_mitogen.strategy.StrategyMixin, LinearStrategy):
        def run(self, iterator, play_context):
            mitogen_import_cache.list_collections_once()  # before this play forks its task workers
            return super().run(iterator, play_context)
