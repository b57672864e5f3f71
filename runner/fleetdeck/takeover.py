"""Take over a hand-installed instance: read what runs on it over SSH and add it to an environment as it is.

    import-instance NAME ADDRESS --domain FQDN [--env-file PATH] [--tier N] [--no-backup] -i ENV

1. Refuse a name the environment already has, before connecting.
2. Fetch and pin the host key (fleetdeck.hostkeys); every later connection checks it.
3. Read, without changing anything: the app's unit (`systemctl show`), its env files (or --env-file), the
   installed version (VERSION of the release ExecStart runs).
4. Map every live key: a setting of the app profile (group app_settings) -> host app_settings; a secret of
   the profile whose value is a catalog secret -> the vault under the catalog's name; anything else ->
   app_passthrough_settings, or app_passthrough_secret_settings (vault) when its name looks secret.
5. Write the instance with fleetdeck.scaffold (all or nothing, the one way instances are created).
6. Back up the instance (playbooks/backup.yml) unless --no-backup; then prove the takeover:
   `configure.yml --check --diff` must report no change on it.

Steps 1-5 are adopt(), shared with POST /v1/imports (fleetdeck.service.imports), which runs step 6
as the runner's backup and configure (check mode) runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleetdeck import hostkeys, inventory, playbooks, scaffold, secrets_catalog, validate
from fleetdeck.errors import Exists, FleetdeckError, Refused

sys.path.append(str(scaffold.REPO / "collections"))
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils import config_files

PASSTHROUGH_SECRET_VAR = "vault_app_passthrough_secret_settings"  # noqa: S105 (a variable name)
# Names of settings the profile does not know that are kept in the vault, not in main.yml.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.I)
CATALOG_REF = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")

# Runs on the instance with python3 (argv: unit, env files): prints what it read as JSON, writes nothing.
READER = r"""
import json, os, re, subprocess, sys
unit, env_files = sys.argv[1], sys.argv[2:]
def show(prop):
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", unit],
                          capture_output=True, text=True).stdout.strip()
out = {"loaded": show("LoadState") == "loaded", "user": show("User"), "exec": "", "version": "", "files": {}}
env_files = env_files or re.findall(r"(\S+) \(ignore_errors=", show("EnvironmentFiles"))
match = re.search(r"path=(\S+)", show("ExecStart"))
if match:
    out["exec"] = match.group(1)
    release = os.path.dirname(os.path.dirname(os.path.realpath(match.group(1))))
    try:
        out["version"] = open(os.path.join(release, "VERSION")).read().strip()
    except OSError:
        pass
for path in env_files:
    try:
        out["files"][path] = {"text": open(path).read()}
    except OSError as exc:
        out["files"][path] = {"error": exc.strerror}
json.dump(out, sys.stdout)
"""


@dataclass
class Mapped:
    """Where each live key goes."""

    settings: dict[str, str] = field(default_factory=dict)
    secret_settings: dict[str, str] = field(default_factory=dict)  # env name -> the profile's template
    secrets: dict[str, str] = field(default_factory=dict)  # vault variable -> live value
    passthrough: dict[str, str] = field(default_factory=dict)
    passthrough_secrets: dict[str, str] = field(default_factory=dict)


class ReadError(FleetdeckError):
    """The instance cannot be read as asked; `field` names the input at fault (address or env_file)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def import_instance(env: str | Path, name: str, address: str, domain: str, *, tier: int = 1, port: int = 22,
                    env_file: str | None = None, backup: bool = True) -> list[str]:
    """Import the instance, back it up and prove the takeover (scripts/import-instance); returns the lines
    to show the operator (never a secret value)."""
    env = Path(env).absolute()
    report = adopt(env, name, address, domain, tier=tier, port=port, env_file=env_file)
    if backup:
        _playbook(env, "backup.yml", name, "the backup before the takeover")
        report.append(f"{name}: backed up (playbooks/backup.yml)")
    _playbook(env, "configure.yml", name, "the takeover check", "--check", "--diff")
    report.append(f"{name}: configure.yml --check --diff changes nothing: taken over as it runs")
    return report


def adopt(env: str | Path, name: str, address: str, domain: str, *, tier: int = 1, port: int = 22,
          env_file: str | None = None) -> list[str]:
    """Steps 1-5: read the instance and write it into the environment; the server is not changed.
    Returns what was written and how the keys were mapped (never a secret value)."""
    name, address, port = validate.instance_name(name), validate.address(address), validate.port(port)
    env_file = validate.env_file(env_file) if env_file is not None else None
    env = Path(env).absolute()
    if (env / "hosts.yml").exists() and inventory.load(env).exists(name):
        raise Exists(f"instance {name!r} already exists in {env}; import refuses to overwrite it")
    profile_dir = env if (env / "group_vars").is_dir() else scaffold.EXAMPLE
    key_line = hostkeys.entry(address, port, hostkeys.fetch(address, port))
    live = _read_live(address, port, key_line, profile(profile_dir).get("app_name", "refapp"), env_file)
    if not live["version"]:
        raise ReadError(f"{address}: cannot tell the installed version (no VERSION next to the unit's "
                        f"ExecStart {live['exec'] or '(none)'})", "address")
    values = live_values(address, live)
    mapped = map_keys({k: v for file_values in values.values() for k, v in file_values.items()},
                      profile(profile_dir), {s.name for s in secrets_catalog.load(profile_dir)})
    extra = _extra_vars(mapped, _env_paths(address, values, mapped), live)
    written = scaffold.add_instance(env, name, domain, address, tier=tier, version=live["version"], port=port,
                                    host_key=key_line, extra_vars=extra,
                                    secret_values=_vault_values(mapped))
    report = [f"wrote {path}" for path in written]
    report.append(f"{name}: version {live['version']}, {len(mapped.settings)} setting(s), {len(mapped.secrets)} "
                  f"catalog secret(s) into the vault, pass-through: {sorted(mapped.passthrough) or 'none'} "
                  f"(plain), {sorted(mapped.passthrough_secrets) or 'none'} (secret)")
    return report


def proof_failure(name: str, env: Path, changed: int) -> str | None:
    """Why the takeover is not proven when configure.yml --check reports `changed` changes on the instance."""
    if not changed:
        return None
    return (f"{name} is in {env}, but configure.yml --check reports {changed} change(s) on it: the inventory "
            "does not reproduce the instance yet (see the diff of that run)")


def map_keys(live: dict[str, str], profile: dict, catalog: set[str]) -> Mapped:
    mapped = Mapped()
    settings, secret_settings = profile.get("app_settings") or {}, profile.get("app_secret_settings") or {}
    for key, value in sorted(live.items()):
        if "{{" in value or "{%" in value:
            raise Refused(f"live setting {key} holds a Jinja marker ({{{{ or {{%); adopt it by hand")
        ref = CATALOG_REF.fullmatch(str(secret_settings.get(key, "")).strip())
        if ref and ref.group(1) in catalog:
            mapped.secret_settings[key] = secret_settings[key]
            mapped.secrets[f"vault_{ref.group(1)}"] = value
        elif key in settings:
            mapped.settings[key] = value
        elif key in secret_settings or SECRET_NAME.search(key):
            mapped.passthrough_secrets[key] = value
        else:
            mapped.passthrough[key] = value
    return mapped


def _extra_vars(mapped: Mapped, paths: tuple[str, str], live: dict) -> dict:
    extra: dict = {"app_settings": mapped.settings, "app_secret_settings": mapped.secret_settings,
                   "app_settings_file": paths[0], "app_secrets_file": paths[1]}
    if mapped.passthrough:
        extra["app_passthrough_settings"] = mapped.passthrough
    if mapped.passthrough_secrets:
        extra["app_passthrough_secret_settings"] = f"{{{{ {PASSTHROUGH_SECRET_VAR} }}}}"
    if live["user"]:
        extra["app_user"] = live["user"]
    root = re.match(r"^(/.+)/current/", live["exec"])
    if root:
        extra["app_root"] = root.group(1)
        extra["backup_data_dir"] = f"{root.group(1)}/shared/data"
    return extra


def _vault_values(mapped: Mapped) -> dict:
    passthrough = {PASSTHROUGH_SECRET_VAR: mapped.passthrough_secrets} if mapped.passthrough_secrets else {}
    return {**mapped.secrets, **passthrough}


def _env_paths(address: str, values: dict[str, dict[str, str]], mapped: Mapped) -> tuple[str, str]:
    """(settings file, secrets file): one file holds both, or of two files one holds every secret."""
    if len(values) == 1:
        path = next(iter(values))
        return path, path
    secret_keys = set(mapped.secret_settings) | set(mapped.passthrough_secrets)
    holders = [path for path, keys in values.items() if set(keys) & secret_keys]
    if len(values) == 2 and len(holders) == 1 and secret_keys <= set(values[holders[0]]):
        plain = next(path for path in values if path != holders[0])
        if not set(values[plain]) & secret_keys and not set(values[holders[0]]) - secret_keys:
            return plain, holders[0]
    raise Refused(f"{address}: env files {sorted(values)}: need one file, or two with the secrets in one and "
                  "the other settings in the other; pass the file to take over with --env-file")


def _read_live(address: str, port: int, key_line: str, app_name: str, env_file: str | None) -> dict:
    with tempfile.NamedTemporaryFile("w", prefix="fleetdeck-import-", suffix=".known_hosts") as known:
        known.write(key_line)
        known.flush()
        return read_live(address, port, Path(known.name), app_name, env_file)


def read_live(address: str, port: int, known_hosts: Path, app_name: str, env_file: str | None = None) -> dict:
    """What runs on the instance (READER's answer), over SSH checked against `known_hosts`; changes nothing."""
    user = os.environ.get("ANSIBLE_REMOTE_USER", "root")
    command = shlex.join(["python3", "-", f"{app_name}.service", *([env_file] if env_file else [])])
    cmd = ["ssh", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ControlMaster=no", "-p", str(port)]
    if os.environ.get("ANSIBLE_PRIVATE_KEY_FILE"):
        cmd += ["-i", os.environ["ANSIBLE_PRIVATE_KEY_FILE"]]
    cmd += [f"{user}@{address}", command if user == "root" else f"sudo -n {command}"]
    proc = subprocess.run(cmd, input=READER, capture_output=True, text=True)
    if proc.returncode:
        raise ReadError(f"{address}: reading the instance over SSH failed (rc {proc.returncode}): "
                        f"{proc.stderr.strip()[-400:]}", "address")
    live = json.loads(proc.stdout)
    if not live["loaded"]:
        raise ReadError(f"{address}: no systemd unit {app_name}.service (app_name of the profile)", "address")
    if not live["files"]:
        raise ReadError(f"{address}: {app_name}.service names no EnvironmentFile; pass one with --env-file",
                        "env_file")
    for path, content in live["files"].items():
        if "error" in content:
            raise ReadError(f"{address}: cannot read env file {path}: {content['error']}", "env_file")
    return live


def live_values(address: str, live: dict) -> dict[str, dict[str, str]]:
    """env file -> its values, of a read_live answer."""
    return {path: _parse(address, path, content) for path, content in live["files"].items()}


def _parse(address: str, path: str, content: dict) -> dict[str, str]:
    try:
        return config_files.parse_env(content["text"])
    except config_files.ConfigFileError as exc:
        raise ReadError(f"{address}: env file {path}: {exc}", "env_file") from None


def profile(env: Path) -> dict:
    """The group_vars/all variables of the environment (the app profile), merged file by file."""
    merged: dict = {}
    for path in sorted((env / "group_vars" / "all").glob("*.yml")):
        try:
            merged.update(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise FleetdeckError(f"{path} is not valid YAML: {exc}") from None
    return merged


def _playbook(env: Path, playbook: str, name: str, what: str, *args: str) -> None:
    """Run a playbook on the one instance, showing its output; raises when it fails, or, run with --check,
    when it would change the instance."""
    proc, changed = playbooks.run(env, playbook, "--limit", name, *args)
    print(proc.stdout, end="", flush=True)
    if proc.returncode or name not in changed:
        print(proc.stderr, end="", file=sys.stderr)
        raise FleetdeckError(f"{what} (playbooks/{playbook}) failed on {name} (rc {proc.returncode}); "
                             f"{name} is already in {env}: fix the cause and run the playbook again")
    failure = proof_failure(name, env, changed[name]) if "--check" in args else None
    if failure:
        raise FleetdeckError(failure)
