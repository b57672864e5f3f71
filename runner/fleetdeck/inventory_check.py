"""Check a whole environment before Ansible uses it (scripts/check-inventory).

Every instance listed in hosts.yml: a valid name; host_vars/<name>/main.yml with valid settings and its
tier group; host_vars/<name>/vault.yml private, decrypting with the current password and holding every
secret of the catalog; its SSH host key pinned in known_hosts. Each problem is one line naming the file
(relative to the environment) and the field. Secret values are never part of a problem.
"""

from __future__ import annotations

import binascii
import stat
from collections.abc import Callable
from pathlib import Path

import paramiko

from fleetdeck import inventory, secrets_catalog, validate, vault
from fleetdeck.errors import FleetdeckError, Refused

REQUIRED = ("ansible_host", "app_domain", "fleetdeck_tier", "app_version", "app_features")
CHECKS: dict[str, Callable] = {"ansible_host": validate.address, "app_domain": validate.domain,
                               "fleetdeck_tier": validate.tier, "app_version": validate.version,
                               "ansible_port": validate.port}


def check(env: str | Path, password: bytes | None = None) -> tuple[inventory.Inventory, list[str]]:
    """The environment and its problems (empty: all good). An unreadable hosts.yml, catalog or vault
    password file raises. Without `password`, the vault password file's."""
    inv = inventory.load(env)
    secrets = secrets_catalog.load(inv.path)
    password = password or vault.read_password()
    problems: list[str] = []
    known = _known_hosts(inv.path / "known_hosts", problems)
    groups = inv.groups()
    addresses: dict[str, str] = {}
    for host in inv.hosts():
        settings = _settings(inv.path, host, groups, problems)
        _vault(inv.path, host, secrets, password, problems)
        if not isinstance(settings.get("ansible_host"), str):
            continue
        port = settings.get("ansible_port", 22)
        pinned_as = settings["ansible_host"] if port == 22 else f"[{settings['ansible_host']}]:{port}"
        if pinned_as in addresses:
            problems.append(f"host_vars/{host}/main.yml: ansible_host: {pinned_as} is also the address of "
                            f"{addresses[pinned_as]}")
        addresses[pinned_as] = host
        if known is not None and not known.lookup(pinned_as):
            problems.append(f"known_hosts: {host}: no host key pinned for {pinned_as} (scripts/add-instance "
                            f"pins it; or: ssh-keyscan -t ed25519 -p {port} {settings['ansible_host']})")
    listed = set(inv.hosts())
    host_vars = inv.path / "host_vars"
    for orphan in sorted(p.name for p in host_vars.iterdir() if p.is_dir()) if host_vars.is_dir() else []:
        if orphan not in listed and not orphan.startswith("."):
            problems.append(f"host_vars/{orphan}: no instance {orphan!r} in hosts.yml")
    return inv, problems


def _settings(env: Path, host: str, groups: dict[str, list[str]], problems: list[str]) -> dict:
    """host_vars/<host>/main.yml, checked; {} when it cannot be read."""
    try:
        validate.instance_name(host)
    except Refused as exc:
        problems.append(f"hosts.yml: {host}: {exc}")
    name = f"host_vars/{host}/main.yml"
    try:
        settings = vault.parse((env / name).read_bytes(), name)
    except FileNotFoundError:
        problems.append(f"{name}: missing")
        return {}
    except FleetdeckError as exc:
        problems.append(str(exc))
        return {}
    problems += [f"{name}: {key}: missing" for key in REQUIRED if key not in settings]
    for key, valid in CHECKS.items():
        if key in settings:
            try:
                valid(settings[key])
            except Refused as exc:
                problems.append(f"{name}: {key}: {exc}")
                del settings[key]  # reported once, not again by the checks that use it
            except TypeError:
                problems.append(f"{name}: {key}: {settings.pop(key)!r} has the wrong type")
    if "app_features" in settings and not isinstance(settings["app_features"], list):
        problems.append(f"{name}: app_features: must be a list (e.g. [] or [beta])")
    tier_group = inventory.TIER_GROUPS.get(settings.get("fleetdeck_tier"))
    in_groups = [g for g in inventory.TIER_GROUPS.values() if host in groups.get(g, [])]
    if tier_group and in_groups != [tier_group]:
        problems.append(f"hosts.yml: {host}: fleetdeck_tier is {settings['fleetdeck_tier']}, so it belongs to "
                        f"group {tier_group} only, but it is in: {', '.join(in_groups) or 'no tier group'}")
    return settings


def _vault(env: Path, host: str, secrets: list[secrets_catalog.Secret], password: bytes, problems: list[str]) -> None:
    name = f"host_vars/{host}/vault.yml"
    path = env / name
    if not path.is_file():
        problems.append(f"{name}: missing (every instance has its secrets there)")
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o600:
        problems.append(f"{name}: mode {mode:04o}, should be 0600 (chmod 600 {path})")
    try:
        variables = vault.parse(vault.decrypt(path.read_bytes(), password, name), name)
    except FleetdeckError as exc:
        problems.append(str(exc))
        return
    for secret in secrets:
        value = variables.get(secret.vault_var)
        if value is None:
            problems.append(f"{name}: {secret.vault_var}: missing (secret {secret.name} of the catalog)")
        elif not isinstance(value, str) or not value:
            problems.append(f"{name}: {secret.vault_var}: must be a non-empty string")


def _known_hosts(path: Path, problems: list[str]) -> paramiko.HostKeys | None:
    """The pinned keys; None (and a problem) when the file is missing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        problems.append("known_hosts: missing, so no host key is pinned and Ansible refuses every instance")
        return None
    keys = paramiko.HostKeys()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip(), number)
        except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, binascii.Error):
            entry = None
        if entry is None:
            problems.append(f"known_hosts: line {number}: not a valid 'HOST KEYTYPE BASE64KEY' entry")
            continue
        for hostname in entry.hostnames:
            keys.add(hostname, entry.key.get_name(), entry.key)
    return keys
