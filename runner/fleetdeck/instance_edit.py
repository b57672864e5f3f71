"""Change an existing instance's settings (tier, canary membership, feature flags, version hold) and take
a decommissioned instance out of its environment. Both run under the environment lock and return a unified
diff of what they changed; host_vars/<name>/main.yml keeps its comments and other lines."""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml

from fleetdeck import files, inventory, validate
from fleetdeck.errors import FleetdeckError, Refused

MAX_REASON = 200
ARCHIVE = ".archive"  # hidden: Ansible does not read it


@dataclass(frozen=True)
class Change:
    """None leaves a setting as it is."""

    tier: int | None = None
    canary: bool | None = None
    features: list[str] | None = None
    hold: bool | None = None
    hold_reason: str | None = None


def hold_reason(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_REASON or any(c in value for c in "\r\n\0"):
        raise Refused(f"hold_reason must be one line of at most {MAX_REASON} characters")
    return value


def change(env: Path, name: str, wanted: Change) -> str:
    """Apply `wanted` to instance `name`; the diff of hosts.yml and main.yml ('' when nothing changed)."""
    env = Path(env).absolute()
    if wanted.tier is not None:
        validate.tier(wanted.tier)
    if wanted.features is not None:
        wanted = replace(wanted, features=validate.features(wanted.features))
    if wanted.hold_reason is not None:
        hold_reason(wanted.hold_reason)
    with files.env_lock(env, change=f"change instance {name}"):
        inv = inventory.load(env)
        if name not in inv.hosts():
            raise Refused(f"no instance {name!r} in {env}")
        main_path = env / "host_vars" / name / "main.yml"
        old_main = main_path.read_text() if main_path.exists() else ""
        current = yaml.safe_load(old_main) or {}
        settings: dict[str, object] = {}
        if wanted.tier is not None:
            settings["fleetdeck_tier"] = wanted.tier
        if wanted.features is not None:
            settings["app_features"] = wanted.features
        if wanted.hold is not None:
            settings["rollout_hold"] = wanted.hold
            if not wanted.hold:
                settings["rollout_hold_reason"] = None
        if wanted.hold_reason is not None and (wanted.hold or (wanted.hold is None and current.get("rollout_hold"))):
            settings["rollout_hold_reason"] = wanted.hold_reason
        elif wanted.hold_reason is not None:
            raise Refused("hold_reason needs a hold: send hold: true with it")
        new_main = _set_vars(old_main, settings, main_path)

        old_hosts = (env / "hosts.yml").read_text()
        tree = inv.tree
        groups = inv.groups()
        tier = wanted.tier if wanted.tier is not None else _tier(groups, name)
        canary = wanted.canary if wanted.canary is not None else name in groups.get(inventory.CANARY_GROUP, [])
        if tier != _tier(groups, name) or canary != (name in groups.get(inventory.CANARY_GROUP, [])):
            tree = inventory.with_instance(inventory.without_instance(tree, name, inventory.PLACEMENT_GROUPS), name,
                                          tier, canary)
        new_hosts = inventory.dump(tree) if tree is not inv.tree else old_hosts

        if new_main != old_main:
            files.replace(main_path, new_main.encode())
        if new_hosts != old_hosts:
            files.replace(env / "hosts.yml", new_hosts.encode())
    return _diff(env, "hosts.yml", old_hosts, new_hosts) + _diff(env, f"host_vars/{name}/main.yml", old_main, new_main)


def remove(env: Path, name: str) -> tuple[Path, str]:
    """Take `name` out of hosts.yml and known_hosts; its host_vars (the vault still encrypted) and its pinned
    host keys move to .archive/<name>-<time>/. Returns the archive directory and the diff of hosts.yml."""
    env = Path(env).absolute()
    with files.env_lock(env, change=f"remove instance {name} (its host_vars archived)"):
        inv = inventory.load(env)
        if name not in inv.hosts():
            raise Refused(f"no instance {name!r} in {env}")
        address = str(inv.public_vars(name).get("ansible_host", name))
        port = int(inv.public_vars(name).get("ansible_port", 22))
        archive = env / ARCHIVE / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        archive.mkdir(parents=True)
        known_path = env / "known_hosts"
        known = known_path.read_text() if known_path.exists() else ""
        pinned = f"[{address}]:{port}" if port != 22 else address
        lines = known.splitlines(keepends=True)
        kept = [line for line in lines if line.split()[:1] != [pinned]]
        files.write_new(archive / "known_hosts", "".join(line for line in lines if line not in kept).encode())
        old_hosts = (env / "hosts.yml").read_text()
        new_hosts = inventory.dump(inventory.without_instance(inv.tree, name))
        files.replace(env / "hosts.yml", new_hosts.encode())  # the commit point: from here it is gone
        if known:
            files.replace(known_path, "".join(kept).encode())
        if (env / "host_vars" / name).exists():
            os.rename(env / "host_vars" / name, archive / "host_vars")
            files.sync_dir(env / "host_vars")
        files.sync_dir(archive)
    return archive, _diff(env, "hosts.yml", old_hosts, new_hosts)


def _tier(groups: dict[str, list[str]], name: str) -> int:
    return next((tier for tier, group in inventory.TIER_GROUPS.items() if name in groups.get(group, [])), 1)


def _set_vars(text: str, settings: dict[str, object], path: Path) -> str:
    """`text` with each top-level `key:` entry replaced by `key: <JSON value>` (appended when missing,
    dropped when the value is None); other lines and comments stay as they are."""
    lines = text.splitlines()
    for key, value in settings.items():
        out, skipping, found = [], False, False
        for line in lines:
            if re.match(rf"{re.escape(key)}\s*:", line):
                skipping, found = True, True
                if value is not None:
                    out.append(f"{key}: {json.dumps(value)}")
                continue
            if skipping and (line.startswith((" ", "\t", "- ")) or line == "-"):
                continue  # the old value's continuation lines
            skipping = False
            out.append(line)
        if not found and value is not None:
            out.append(f"{key}: {json.dumps(value)}")
        lines = out
    new = "\n".join(lines) + "\n" if lines else ""
    expected = {**(yaml.safe_load(text) or {}), **settings}
    expected = {k: v for k, v in expected.items() if v is not None}
    if (yaml.safe_load(new) or {}) != expected:
        raise FleetdeckError(f"{path}: its layout is too unusual to edit safely; change it by hand")
    return new


def _diff(env: Path, name: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"a/{env.name}/{name}", f"b/{env.name}/{name}"))

