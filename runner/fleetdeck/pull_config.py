"""Adopt live values of an instance into the inventory (scripts/pull-config), the reverse of configure.

    pull-config NAME [--keys K ...] [--yes] -i ENV

The keys to adopt are env file keys that drift (playbooks/drift.yml, fleetdeck.drift) reports for NAME,
optionally narrowed by --keys. Their live values are read over SSH (the pinned host key) and written:
- a secret of the catalog (the profile's app_secret_settings points at it) -> its vault variable;
- another secret (drift marks it secret) -> vault_app_passthrough_secret_settings;
- a plain setting -> the host's app_settings when it overrides the group's (an imported instance), else
  app_host_settings for a setting of the profile, else app_passthrough_settings;
- a key only the inventory has (removed on the instance) -> removed from the host's mappings.
The inventory diff is shown first (secret values as ********); nothing is written without --yes.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from fleetdeck import drift, files, inventory, secrets_catalog, takeover, vault
from fleetdeck.errors import Refused

MASK = "********"
HOST_MAPPINGS = ("app_settings", "app_host_settings", "app_passthrough_settings", "app_secret_settings")


def pull(env: str | Path, name: str, keys: list[str] | None, write: bool) -> list[str]:
    """Lines to show (the preview, then what was written); writes only when `write`."""
    inv = inventory.load(env)
    host_vars = inv.public_vars(name)  # raises for an unknown instance
    items = [i for i in (drift.collect(inv.path, name).get(name) or []) if i["where"] not in ("release",)
             and not i["where"].endswith(".service")]
    if keys:
        unknown = sorted(set(keys) - {i["key"] for i in items})
        if unknown:
            raise Refused(f"{name}: no drift in the env files for {', '.join(unknown)}; nothing to pull for them")
        items = [i for i in items if i["key"] in keys]
    if not items:
        return [f"{name}: the env files match the inventory; nothing to pull"]

    live = takeover.read_live(host_vars["ansible_host"], host_vars.get("ansible_port", 22), inv.path / "known_hosts",
                              takeover.profile(inv.path).get("app_name", "refapp"))
    values = {k: v for file_values in takeover.live_values(host_vars["ansible_host"], live).values()
              for k, v in file_values.items()}
    main_path = inv.path / "host_vars" / name / "main.yml"
    vault_path = inv.path / "host_vars" / name / "vault.yml"
    yaml = YAML()
    yaml.width = 1000
    yaml.preserve_quotes = True
    with files.env_lock(inv.path, change=f"pull the live settings of {name} into its host_vars" if write else None):
        main = yaml.load(main_path.read_text())
        password = vault.read_password()
        secrets = vault.decrypt_file(vault_path, password)
        vault_changes = _apply(inv.path, main, secrets, items, values)
        new_main = _dump(yaml, main)
        old_main = main_path.read_text()
        preview = list(difflib.unified_diff(old_main.splitlines(), new_main.splitlines(),
                                            f"a/host_vars/{name}/main.yml", f"b/host_vars/{name}/main.yml",
                                            lineterm=""))
        preview += [f"host_vars/{name}/vault.yml: {change}" for change in vault_changes]
        if not write:
            return [*preview, "preview only: run again with --yes to write it"]
        if vault_changes:
            vault.encrypt_file(vault_path, secrets, password)
        files.replace(main_path, new_main.encode())
    return [*preview, f"{name}: adopted {', '.join(sorted(i['key'] for i in items))} into {inv.path}"]


def _apply(env: Path, main: dict, secrets: dict, items: list[dict], values: dict[str, str]) -> list[str]:
    profile = takeover.profile(env)
    catalog = {s.name for s in secrets_catalog.load(env)}
    secret_settings = {**(profile.get("app_secret_settings") or {}), **(main.get("app_secret_settings") or {})}
    changes = []
    for item in items:
        key = item["key"]
        if item["change"] == "removed":
            changes += _remove(main, secrets, key)
            continue
        value = values[key]
        ref = takeover.CATALOG_REF.fullmatch(str(secret_settings.get(key, "")).strip())
        if ref and ref.group(1) in catalog:
            secrets[f"vault_{ref.group(1)}"] = value
            (secrets.get(secrets_catalog.ROTATED_AT) or {}).pop(ref.group(1), None)  # set by hand: age unknown
            changes.append(f"vault_{ref.group(1)}: {MASK} (from live {key})")
        elif item["secret"] or takeover.SECRET_NAME.search(key):
            secrets.setdefault(takeover.PASSTHROUGH_SECRET_VAR, {})[key] = value
            main.setdefault("app_passthrough_secret_settings", f"{{{{ {takeover.PASSTHROUGH_SECRET_VAR} }}}}")
            changes.append(f"{takeover.PASSTHROUGH_SECRET_VAR}.{key}: {MASK}")
        else:
            # quoted: Ansible reads YAML 1.1, where on/no/yes would be booleans
            main.setdefault(_plain_mapping(main, profile, key), {})[key] = DoubleQuotedScalarString(value)
    return changes


def _plain_mapping(main: dict, profile: dict, key: str) -> str:
    if key not in (profile.get("app_settings") or {}):
        return "app_passthrough_settings"
    return "app_settings" if "app_settings" in main else "app_host_settings"


def _remove(main: dict, secrets: dict, key: str) -> list[str]:
    passthrough = secrets.get(takeover.PASSTHROUGH_SECRET_VAR) or {}
    if key in passthrough:
        del passthrough[key]
        return [f"{takeover.PASSTHROUGH_SECRET_VAR}.{key}: removed"]
    for mapping in HOST_MAPPINGS:
        if key in (main.get(mapping) or {}):
            del main[mapping][key]
            return []
    raise Refused(f"{key} is set in group_vars, not in this instance's host_vars; remove it there, or override it")


def _dump(yaml: YAML, data) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()

