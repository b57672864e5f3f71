"""Controller side of secret rotation: new values from the catalog, written back into one vault.yml.

`scripts/vault-update` (fleetdeck.cli) is the command line the secrets_rotation role runs on the controller:

    vault-update -i ENV HOST generate SECRET   # prints a new value made by the catalog's rule (writes nothing)
    vault-update -i ENV HOST set SECRET        # stdin: {"old": ..., "new": ..., "rotated_at": null}

Values only travel on stdin/stdout, never on a command line. `set` replaces vault_<SECRET> only if the
file still holds `old` (so two rotations, or a rotation and a hand edit, cannot overwrite each other),
stamps vault_secrets_rotated_at[SECRET] with the current UTC time and rewrites the whole-file vault
atomically (temporary file + rename, mode 0600) under the environment lock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fleetdeck import files, secrets_catalog, vault
from fleetdeck.errors import FleetdeckError, Refused


def vault_path(env: Path, host: str) -> Path:
    return env / "host_vars" / host / "vault.yml"


def find_secret(env: Path, name: str) -> secrets_catalog.Secret:
    for secret in secrets_catalog.load(env):
        if secret.name == name:
            return secret
    raise Refused(f"{name!r} is not in the secret catalog of {env}")


def generate(env: Path, name: str) -> str:
    return find_secret(env, name).generate()


def set_secret(env: Path, host: str, name: str, old: str, new: str, password: bytes,
               now: datetime | None = None, rotated_at: str | None = None) -> None:
    """Replace vault_<name> of `host` with `new` if it still is `old`; atomic, locked, stamped.

    `rotated_at` (a rollback putting the old value back) restores that stamp instead of stamping now.
    """
    secret = find_secret(env, name)
    if not new:
        raise Refused(f"refusing to write an empty {secret.vault_var}")
    path = vault_path(env, host)
    stamp = rotated_at or (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with files.env_lock(env, change=f"rotate {name} of {host}"):
        if not path.exists():
            raise FleetdeckError(f"no vault file {path}")
        variables = vault.decrypt_file(path, password)
        current = variables.get(secret.vault_var)
        if current == new:
            return  # already written (a retried step): nothing to do
        if current != old:
            raise FleetdeckError(f"{path}: {secret.vault_var} is not the value this rotation started from "
                                 "(changed meanwhile); left unchanged")
        variables[secret.vault_var] = new
        rotated = dict(variables.get(secrets_catalog.ROTATED_AT) or {})
        rotated[secret.name] = stamp
        variables[secrets_catalog.ROTATED_AT] = rotated
        vault.encrypt_file(path, variables, password)
