"""Safety net behind no_log: mask every secret the runner knows in event text before it is stored.

Which secrets: every string leaf of a whole-file vault (`$ANSIBLE_VAULT;...`) and every inline `!vault`
value in the YAML files of the inventory (host_vars/, group_vars/ and the inventory file itself),
decrypted with ansible's VaultLib (via fleetdeck.vault) and the runner's vault password file; the vault
password itself; and the secrets the caller adds (the service's HMAC secrets).
All hosts' values, not only the targeted ones: a play can read another host's hostvars.

Each secret is masked as a whole and, when it spans several lines (a private key), line by line, in
the forms a task is likely to print it: as is, JSON-escaped (once and twice), URL-encoded, and base64
(standard and urlsafe alphabets, at each of the three byte alignments inside a longer encoded text).
A vault that does not decrypt or parse is skipped (and logged): Ansible cannot read it either, so its
values cannot reach the output, and the other instances must still be operable.
In addition, the value of any key named `vault_*` in structured event data is masked, whatever it holds.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

import yaml

from fleetdeck import vault
from fleetdeck.errors import FleetdeckError

log = logging.getLogger(__name__)

MASK = "********"
MIN_LENGTH = 4  # shorter values (and encoded forms) would mask ordinary words; such values are not secrets
# A line of a multi-line value is masked on its own from this length on: the lines of keys and
# certificates are 64-76 characters, while short lines (`}`, `[section]`, `user: app`) are common words.
MIN_LINE_LENGTH = 12
# The armor lines of PEM and OpenSSH keys are the same in every key: public, and masking them would
# only hide which kind of key a (masked) output held.
_ARMOR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")


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


def _pieces(secret: str) -> set[str]:
    """The secret, trimmed, and each long enough line of it that is not key armor."""
    pieces = {secret, secret.strip()}
    lines = [line.strip() for line in secret.strip().splitlines()]
    if len(lines) > 1:
        pieces |= {line for line in lines if len(line) >= MIN_LINE_LENGTH and not _ARMOR.fullmatch(line)}
    return pieces


def _base64_cores(raw: bytes) -> set[str]:
    """Base64 characters that encode only bytes of `raw`, wherever `raw` starts inside an encoded text."""
    cores = set()
    for offset in range(3):
        first, end = -(-offset * 8 // 6), (offset + len(raw)) * 8 // 6  # whole 6-bit groups inside raw
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            cores.add(encode(b"\0" * offset + raw).decode()[first:end])
    return cores


def forms(piece: str) -> set[str]:
    """The texts under which `piece` can appear in output."""
    once = json.dumps(piece)[1:-1]
    found = {
        piece,
        once,
        json.dumps(piece, ensure_ascii=False)[1:-1],
        json.dumps(once)[1:-1],
        quote(piece, safe=""),
        quote(piece),
        quote_plus(piece),
    }
    return found | _base64_cores(piece.encode())


class Redactor:
    def __init__(self, secrets: Iterable[str]):
        needles = {f for s in secrets if len(s) >= MIN_LENGTH for p in _pieces(s) for f in forms(p)}
        needles = {n for n in needles if len(n) >= MIN_LENGTH}
        # Longest first: a secret that contains another one is masked as a whole.
        pattern = "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
        self._pattern = re.compile(pattern) if pattern else None

    @classmethod
    def from_inventory(
        cls, inventory: Path, password_file: Path | None, also: Iterable[str | None] = ()
    ) -> Redactor:
        values = {s for s in also if s}
        if password_file is None or not password_file.is_file():
            return cls(values)
        password = vault.read_password(password_file)
        values.add(password.decode())
        root = inventory if inventory.is_dir() else inventory.parent
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
        """A copy of JSON-like data with secrets masked (in keys too) and every `vault_*` key's value masked."""
        if isinstance(value, dict):
            return {
                self.data(k): MASK if isinstance(k, str) and k.startswith("vault_") else self.data(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value
