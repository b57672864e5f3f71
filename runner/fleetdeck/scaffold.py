"""Add an instance to an environment, all or nothing.

Everything is first written to a hidden staging directory (Ansible ignores dotfiles), then moved
into place. For a new environment that is one rename. For an existing one it is three:
host_vars/NAME, known_hosts, and hosts.yml last; hosts.yml is the commit point. `recover` undoes
an uncommitted addition left by a crash (the next add-instance runs it first); any failure inside
the process runs it at once. To test crashes, FLEETDECK_TEST_CRASH_AT=<step> SIGKILLs the process
at that step (see STEPS).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import yaml

from fleetdeck import files, hostkeys, inventory, rekey, secrets_catalog, validate, vault
from fleetdeck.errors import Exists, FleetdeckError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example"
STAGING_PREFIX = ".add-"
STEPS = ("add:staged", "add:host_vars", "add:known_hosts", "add:hosts.yml")
KNOWN_HOSTS_HEADER = "# SSH host keys of this environment's instances, pinned by scripts/add-instance.\n"


def add_instance(env: str | Path, name: str, domain: str, address: str, *, tier: int = 1,
                 canary: bool = False, version: str = "1.0.0", port: int = 22,
                 host_key: bool | str = True, features: tuple[str, ...] = (), extra_vars: dict | None = None,
                 secret_values: dict[str, str] | None = None) -> list[Path]:
    """Validate, pin the host key, generate the secrets and write the instance; returns the paths written.

    `host_key` may be a known_hosts line fetched already (scripts/import-instance reads the host first).
    `extra_vars` go to main.yml; `secret_values` (vault variable -> value) replace generated ones, and have
    no rotation stamp (their age is unknown).
    """
    name, domain, address = validate.instance_name(name), validate.domain(domain), validate.address(address)
    tier, version, port = validate.tier(tier), validate.version(version), validate.port(port)
    features = validate.features(features)
    env = Path(env).absolute()
    with files.env_lock(env, change=f"add instance {name} ({address})"):
        recover(env)
        if (env / rekey.JOURNAL).exists():
            raise FleetdeckError(f"a rekey of {env} was interrupted; run scripts/rekey-vault -i {env} first")
        new_env = not (env / "hosts.yml").exists() and not (env.is_dir() and any(env.iterdir()))
        inv = None if new_env else inventory.load(env)
        if inv and inv.exists(name):
            raise Exists(f"instance {name!r} already exists in {env} (hosts.yml or host_vars/{name})")
        password = vault.read_password()
        secrets = secrets_catalog.load(EXAMPLE if new_env else env)
        key_line = host_key if isinstance(host_key, str) else (
            hostkeys.entry(address, port, hostkeys.fetch(address, port)) if host_key else None)
        known_hosts = KNOWN_HOSTS_HEADER if new_env else _read(env / "known_hosts")
        if key_line:
            known_hosts = hostkeys.pin(known_hosts, key_line)

        main = _main_yml(name, domain, address, tier, version, port, features, extra_vars or {})
        secret_vars = secrets_catalog.new_vault(secrets, datetime.now(UTC))
        secret_vars.update(secret_values or {})
        for var in secret_values or {}:
            secret_vars[secrets_catalog.ROTATED_AT].pop(var.removeprefix("vault_"), None)
        stage = env.parent / f".{env.name}.new" if new_env else env / f"{STAGING_PREFIX}{name}"
        stage.mkdir()
        try:
            if new_env:
                shutil.copytree(EXAMPLE / "group_vars", stage / "group_vars")
            host_dir = stage / "host_vars" / name
            host_dir.mkdir(parents=True)
            files.write_new(host_dir / "main.yml", main.encode())
            vault.encrypt_file(host_dir / "vault.yml", secret_vars, password)
            files.write_new(stage / "known_hosts", known_hosts.encode())
            hosts_yml = inventory.dump(inventory.with_instance(inv.tree if inv else {}, name, tier, canary))
            files.write_new(stage / "hosts.yml", hosts_yml.encode())
            for directory in (host_dir, stage / "host_vars", stage):
                files.sync_dir(directory)
            files.crash_point("add:staged")
            if new_env:
                os.rename(stage, env)
                files.sync_dir(env.parent)
            else:
                _commit(env, stage, name)
        except BaseException:
            recover(env)
            raise
    return [env / "host_vars" / name / "main.yml", env / "host_vars" / name / "vault.yml",
            env / "known_hosts", env / "hosts.yml"]


def recover(env: Path) -> None:
    """Undo additions that were staged but not committed (hosts.yml not yet replaced)."""
    shutil.rmtree(env.parent / f".{env.name}.new", ignore_errors=True)
    for stage in env.glob(f"{STAGING_PREFIX}*"):
        name = stage.name.removeprefix(STAGING_PREFIX)
        if (stage / "hosts.yml").exists():
            if not (stage / "host_vars" / name).exists():
                shutil.rmtree(env / "host_vars" / name)
            if not (stage / "known_hosts").exists():
                original = stage / "known_hosts.orig"
                if original.exists():
                    os.replace(original, env / "known_hosts")
                else:
                    (env / "known_hosts").unlink()
        shutil.rmtree(stage)
        files.sync_dir(env)


def _commit(env: Path, stage: Path, name: str) -> None:
    (env / "host_vars").mkdir(exist_ok=True)
    os.rename(stage / "host_vars" / name, env / "host_vars" / name)
    files.sync_dir(env / "host_vars")
    files.crash_point("add:host_vars")
    if (env / "known_hosts").exists():
        os.link(env / "known_hosts", stage / "known_hosts.orig")  # what recover() restores
    os.replace(stage / "known_hosts", env / "known_hosts")
    files.sync_dir(env)
    files.crash_point("add:known_hosts")
    os.replace(stage / "hosts.yml", env / "hosts.yml")
    files.sync_dir(env)
    files.crash_point("add:hosts.yml")
    shutil.rmtree(stage)


def _main_yml(name: str, domain: str, address: str, tier: int, version: str, port: int,
              features: list[str], extra: dict) -> str:
    lines = [f"# Instance {name}: non-secret settings. Secrets are in vault.yml (scripts/add-instance).",
             f"ansible_host: {json.dumps(address)}",
             *([f"ansible_port: {port}"] if port != 22 else []),
             f"app_domain: {json.dumps(domain)}",
             f"fleetdeck_tier: {tier}",
             f"app_version: {json.dumps(version)}",
             f"app_features: {json.dumps(features)}"]
    extra_yml = yaml.safe_dump(extra, sort_keys=False, default_flow_style=False, width=1000) if extra else ""
    return "\n".join(lines) + "\n" + extra_yml


def _read(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        return path.read_text()
    return ""

