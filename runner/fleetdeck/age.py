"""How old each instance's secrets are, from vault_secrets_rotated_at (values are never returned)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleetdeck import inventory, secrets_catalog, vault


@dataclass(frozen=True)
class SecretAge:
    host: str
    secret: str
    age_days: int | None  # None: no rotation time recorded
    rotate_every_days: int

    @property
    def overdue(self) -> bool:
        return self.age_days is None or self.age_days >= self.rotate_every_days


def secret_ages(inv: inventory.Inventory, password: bytes, now: datetime,
                hosts: list[str] | None = None) -> list[SecretAge]:
    """Of every instance, or of `hosts`."""
    secrets, rows = secrets_catalog.load(inv.path), []
    for host in inv.hosts() if hosts is None else hosts:
        path = inv.path / "host_vars" / host / "vault.yml"
        variables = vault.decrypt_file(path, password) if path.exists() else {}
        rotated = variables.get(secrets_catalog.ROTATED_AT) or {}
        for secret in secrets:
            stamp = rotated.get(secret.name)
            age = (now - datetime.fromisoformat(stamp)).days if stamp else None
            rows.append(SecretAge(host, secret.name, age, secret.rotate_every_days))
    return rows
