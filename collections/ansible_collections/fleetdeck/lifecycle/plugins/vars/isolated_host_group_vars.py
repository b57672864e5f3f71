# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""ansible.builtin.host_group_vars, except that one host's unreadable host_vars fail that host alone."""

from __future__ import annotations

DOCUMENTATION = r"""
name: isolated_host_group_vars
version_added: 0.1.0
short_description: group_vars and host_vars, with a bad host_vars file failing only its host
description:
  - Loads C(group_vars/) and C(host_vars/) beside the inventory and the playbook like
    M(ansible.builtin.host_group_vars) (files ending in C(.yml), C(.yaml), C(.json) or no extension,
    whole-file vaults decrypted; hidden and backup files skipped). Enable it instead of that plugin.
  - >-
    A host_vars file that cannot be loaded (a vault that does not decrypt, malformed YAML, not a
    mapping) does not stop the whole run. The host keeps the variables of its other files, gets
    V(fleetdeck_inventory_errors), a list of C(<file>: <reason>), and every task on it fails with that
    reason, because its connection (C(ansible_connection)) cannot be resolved. Other hosts run normally.
  - The reason never quotes the file's content, so a decrypted vault cannot leak through it.
  - A group_vars file that cannot be loaded concerns every host of the group; it stops the run with
    an error naming the file.
extends_documentation_fragment:
  - ansible.builtin.vars_plugin_staging
author:
  - fleetdeck maintainers (@fleetdeck)
"""

import os

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.group import InventoryObjectType
from ansible.plugins.vars import BaseVarsPlugin
from ansible.template import trust_as_template
from ansible.utils.path import basedir
from ansible.utils.vars import combine_vars

ERRORS_VAR = "fleetdeck_inventory_errors"
# Resolved for every task of the host (also debug and delegated facts): the task fails with the hint.
BROKEN_CONNECTION = "{{ undef(hint=(fleetdeck_inventory_errors | join('; ')) ~ '; fix it, or leave the host out') }}"

_FAILED = {}  # path -> reason: a file that failed once is not decrypted again for every task
_FOUND = {}  # (directory, entity name) -> its vars files, listed once per run like host_group_vars does


class VarsModule(BaseVarsPlugin):
    is_stateless = True

    def get_vars(self, loader, path, entities, cache=True):
        if not isinstance(entities, list):
            entities = [entities]
        root = os.path.realpath(basedir(path))
        data = {}
        for entity in entities:
            data = combine_vars(data, self._entity_vars(loader, root, entity, cache))
        return data

    def _entity_vars(self, loader, root, entity, cache):
        is_host = entity.base_type is InventoryObjectType.HOST
        directory = os.path.join(root, "host_vars" if is_host else "group_vars")
        if entity.name.startswith(os.path.sep):
            return {}
        key = (directory, entity.name)
        if not cache or key not in _FOUND:
            _FOUND[key] = loader.find_vars_files(directory, entity.name) if os.path.isdir(directory) else []
        data, problems = {}, []
        for found in _FOUND[key]:
            if found in _FAILED:
                problems.append(f"{found}: {_FAILED[found]}")
                continue
            try:
                loaded = loader.load_from_file(found, cache="all", unsafe=True, trusted_as_template=True)
                if loaded and not isinstance(loaded, dict):
                    kind = "text" if isinstance(loaded, str) else "list" if isinstance(loaded, list) else "scalar"
                    raise AnsibleParserError(f"it holds {kind}, not a mapping of variables")
                data = combine_vars(data, loaded or {})
            except AnsibleError as exc:
                _FAILED[found] = _reason(exc)
                problems.append(f"{found}: {_FAILED[found]}")
                self._display.warning(f"{found}: {_FAILED[found]}")
        if problems and not is_host:
            raise AnsibleParserError(f"group {entity.name}: {'; '.join(problems)}")
        if problems:
            data[ERRORS_VAR] = problems
            data["ansible_connection"] = trust_as_template(BROKEN_CONNECTION)
        return data


def _reason(exc):
    """What went wrong, without the file's content (Ansible's own message may quote decrypted lines)."""
    message = exc.message.splitlines()[0] if exc.message else type(exc).__name__
    if "decrypt" in message.lower() or "vault" in message.lower():
        return f"cannot be decrypted with the vault password ({message})"
    return f"cannot be loaded ({message})"
