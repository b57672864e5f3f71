"""The secret catalog (group_vars/all/secrets.yml): what each instance's vault holds and how to make it."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from fleetdeck.errors import FleetdeckError

ALPHABETS = {
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
}
KINDS = ("verified", "presented")
ROTATED_AT = "vault_secrets_rotated_at"


@dataclass(frozen=True)
class Secret:
    name: str
    length: int
    alphabet: str
    kind: str
    rotate_every_days: int
    description: str = ""

    @property
    def vault_var(self) -> str:
        return f"vault_{self.name}"

    def generate(self) -> str:
        return "".join(secrets.choice(ALPHABETS[self.alphabet]) for _ in range(self.length))


def load(env: Path) -> list[Secret]:
    path = env / "group_vars" / "all" / "secrets.yml"
    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("fleetdeck_secrets")
    except (OSError, yaml.YAMLError) as exc:
        raise FleetdeckError(f"cannot read the secret catalog {path}: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise FleetdeckError(f"{path}: fleetdeck_secrets must be a non-empty list")
    try:
        catalog = [Secret(**entry) for entry in entries]
    except TypeError as exc:
        raise FleetdeckError(f"{path}: bad fleetdeck_secrets entry: {exc}") from exc
    for secret in catalog:
        if not _valid(secret):
            raise FleetdeckError(f"{path}: secret {secret.name!r} needs a name of [a-z0-9_], alphabet in "
                                 f"{list(ALPHABETS)}, kind in {list(KINDS)}, length 16-4096, "
                                 "rotate_every_days > 0")
    return catalog


def new_vault(catalog: list[Secret], now: datetime) -> dict:
    """Fresh values for every secret, and when each was set (so age is visible without the values)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {**{s.vault_var: s.generate() for s in catalog}, ROTATED_AT: {s.name: stamp for s in catalog}}


def _valid(secret: Secret) -> bool:
    return (bool(re.fullmatch(r"[a-z][a-z0-9_]*", str(secret.name))) and secret.alphabet in ALPHABETS
            and secret.kind in KINDS and isinstance(secret.length, int) and 16 <= secret.length <= 4096
            and isinstance(secret.rotate_every_days, int) and secret.rotate_every_days > 0)
