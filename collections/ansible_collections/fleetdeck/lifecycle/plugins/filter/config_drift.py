# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""Filters comparing an instance's configuration with the inventory, key by key: env_values, unit_values,
env_strings, drift."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.config_files import (
    ConfigFileError,
    parse_env,
    parse_unit,
)

MASK = "********"


def _slurped(slurped, parse, name):
    if not isinstance(slurped, Mapping) or "content" not in slurped:
        return {}
    try:
        return parse(to_text(base64.b64decode(slurped["content"]), errors="surrogate_or_strict"))
    except (ConfigFileError, ValueError) as e:
        raise AnsibleFilterError(f"{name}: {slurped.get('source', 'file')}: {e}") from None


def env_values(slurped):
    """Values of an env file read with ansible.builtin.slurp; {} when it could not be read (no such file)."""
    return _slurped(slurped, parse_env, "env_values")


def unit_values(data):
    """Section.Key values of a unit file: its text (a rendered template), or a slurp result ({} when the file
    could not be read)."""
    if isinstance(data, str):
        try:
            return parse_unit(data)
        except ConfigFileError as e:
            raise AnsibleFilterError(f"unit_values: {e}") from None
    return _slurped(data, parse_unit, "unit_values")


def env_strings(mapping):
    """A settings mapping as the app role's env templates render it: every value as a string."""
    if not isinstance(mapping, Mapping):
        raise AnsibleFilterError(f"env_strings: expected a mapping, got {type(mapping).__name__}")
    return {str(key): str(value) for key, value in mapping.items()}


def _sha256(value):
    return hashlib.sha256(str(value).encode()).hexdigest()


def drift(desired, live, where, secret_keys=()):
    """Differences between two NAME -> value mappings, one dict per key, sorted by key:
    C(where), C(key), C(change) (V(added): only live, V(removed): only desired, V(changed)), C(desired),
    C(live), C(secret). Secret keys are compared by sha256 and both values are shown as ********."""
    if not isinstance(desired, Mapping) or not isinstance(live, Mapping):
        raise AnsibleFilterError("drift: desired and live must be mappings")
    secret_keys = set(secret_keys or ())
    items = []
    for key in sorted(set(desired) | set(live)):
        secret = key in secret_keys
        in_desired, in_live = key in desired, key in live
        if in_desired and in_live:
            same = (_sha256(desired[key]) == _sha256(live[key])) if secret else str(desired[key]) == str(live[key])
            if same:
                continue
            change = "changed"
        else:
            change = "removed" if in_desired else "added"
        show = (lambda value: MASK) if secret else str
        items.append({"where": where, "key": key, "change": change, "secret": secret,
                      "desired": show(desired[key]) if in_desired else None,
                      "live": show(live[key]) if in_live else None})
    return items


class FilterModule:
    def filters(self):
        return {"env_values": env_values, "unit_values": unit_values, "env_strings": env_strings, "drift": drift}
