"""Safety net behind no_log: mask every vault value of the inventory in event text before it is stored.

Which values: every string leaf of a whole-file vault (`$ANSIBLE_VAULT;...`) and every inline `!vault`
value in the YAML files of the inventory (host_vars/, group_vars/ and the inventory file itself),
decrypted with ansible's VaultLib (via fleetdeck.vault) and the runner's vault password file.
All hosts' values, not only the targeted ones: a play can read another host's hostvars. A vault that
does not decrypt or parse is skipped (and logged): Ansible cannot read it either, so its values cannot
reach the output, and the other instances must still be operable.
In addition, the value of any key named `vault_*` in structured event data is masked, whatever it holds.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

from fleetdeck import vault
from fleetdeck.errors import FleetdeckError

log = logging.getLogger(__name__)

MASK = "********"
MIN_LENGTH = 4  # shorter values would mask ordinary words; vault values that short are not secrets


class _VaultTagLoader(yaml.SafeLoader):
    pass


_VaultTagLoader.add_constructor("!vault", lambda loader, node: _Encrypted(loader.construct_scalar(node)))
_VaultTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


class _Encrypted(str):
    pass


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if isinstance(value, str | int | float) and not isinstance(value, bool) else []


class Redactor:
    def __init__(self, values: set[str]):
        values = {v for v in values if len(v) >= MIN_LENGTH}
        pattern = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
        self._pattern = re.compile(pattern) if pattern else None

    @classmethod
    def from_inventory(cls, inventory: Path, password_file: Path | None) -> Redactor:
        if password_file is None or not password_file.is_file():
            return cls(set())
        password = vault.read_password(password_file)
        root = inventory if inventory.is_dir() else inventory.parent
        values: set[str] = set()
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix not in ("", ".yml", ".yaml", ".json"):
                continue
            try:
                values |= cls._file_values(path, password)
            except FleetdeckError as exc:
                log.warning("not masking the values of %s: %s", path, exc)
        return cls(values)

    @classmethod
    def _file_values(cls, path: Path, password: bytes) -> set[str]:
        raw = path.read_bytes()
        if raw.startswith(b"$ANSIBLE_VAULT;"):
            return set(_strings(vault.parse(vault.decrypt(raw, password, path), path)))
        if b"!vault" in raw:
            try:
                tree = yaml.load(raw, Loader=_VaultTagLoader)  # noqa: S506 - a SafeLoader subclass
            except yaml.YAMLError as exc:
                raise FleetdeckError(f"not valid YAML: {type(exc).__name__}") from None
            return cls._inline(tree, password, path)
        return set()

    @classmethod
    def _inline(cls, value, password: bytes, path: Path) -> set[str]:
        if isinstance(value, _Encrypted):
            return {vault.decrypt(value.encode(), password, path).decode()}
        if isinstance(value, dict):
            return {s for v in value.values() for s in cls._inline(v, password, path)}
        if isinstance(value, list):
            return {s for v in value for s in cls._inline(v, password, path)}
        return set()

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern and value else value

    def data(self, value):
        """A copy of JSON-like data with vault values masked and every `vault_*` key's value masked."""
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and k.startswith("vault_") else self.data(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value
