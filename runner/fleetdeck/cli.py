"""Command line of scripts/add-instance, audit, bootstrap-vault, check-inventory, drift, import-instance,
link-collections, pull-config, rekey-vault, secret-age, set-instance and vault-update."""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from fleetdeck import (
    age,
    audit,
    collections,
    drift,
    instance_edit,
    inventory,
    inventory_check,
    pull_config,
    rekey,
    scaffold,
    takeover,
    vault,
    vault_update,
)
from fleetdeck.errors import FleetdeckError, Refused

DEFAULT_ENV = scaffold.REPO / "inventory" / "production"


def bootstrap_vault(args: argparse.Namespace) -> None:
    path = vault.password_file()
    if vault.bootstrap(path):
        print(f"created the vault password file {path} (mode 0600); back it up somewhere safe")
    else:
        print(f"vault password file {path} already exists; left unchanged")
    print("Ansible finds it through ansible.cfg: vault_identity_list = fleetdeck@scripts/vault-pass-client\n"
          "(the client reads $FLEETDECK_VAULT_PASSWORD_FILE, else ~/.config/fleetdeck/vault-pass)")
    print(f"it encrypts {args.inventory} and every other environment that uses this file; "
          "give an environment its own password with FLEETDECK_VAULT_PASSWORD_FILE")


def add_instance(args: argparse.Namespace) -> None:
    written = scaffold.add_instance(args.inventory, args.name, args.domain, args.address, tier=args.tier,
                                    canary=args.canary, version=args.version, port=args.port,
                                    host_key=not args.no_host_key)
    for path in written:
        print(f"wrote {path}")
    if args.no_host_key:
        print(f"no SSH host key pinned (--no-host-key): Ansible will refuse {args.name} until its key is in "
              f"{_shown(args.inventory)}/known_hosts (e.g. ssh-keyscan -t ed25519 {args.address} >> ...)")
    print(f"next: ansible-playbook -i {_shown(args.inventory)} playbooks/deploy.yml --limit {args.name}")


def set_instance(args: argparse.Namespace) -> None:
    features = None if args.features is None else [f.strip() for f in args.features.split(",") if f.strip()]
    diff = instance_edit.change(args.inventory, args.name, instance_edit.Change(
        tier=args.tier, canary=args.canary, features=features, hold=args.hold, hold_reason=args.hold_reason))
    print(diff or f"{args.name}: nothing to change", end="" if diff else "\n")


def import_instance(args: argparse.Namespace) -> None:
    for line in takeover.import_instance(args.inventory, args.name, args.address, args.domain, tier=args.tier,
                                         port=args.port, env_file=args.env_file, backup=not args.no_backup):
        print(line)


def show_drift(args: argparse.Namespace) -> int:
    results = drift.collect(args.inventory, args.limit)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(drift.table(results))
    return drift.DRIFTED if drift.drifted(results) else 0


def pull(args: argparse.Namespace) -> None:
    for line in pull_config.pull(args.inventory, args.name, args.keys, write=args.yes):
        print(line)


def check_inventory(args: argparse.Namespace) -> None:
    inv, problems = inventory_check.check(args.inventory)
    for problem in problems:
        print(problem)
    if problems:
        raise FleetdeckError(f"{len(problems)} problem(s) in {_shown(inv.path)}")
    print(f"{_shown(inv.path)}: {len(inv.hosts())} instance(s) checked: names, settings, vaults, secrets, "
          "host keys: no problems")


def link_collections(args: argparse.Namespace) -> None:
    linked = collections.link(args.requirements, args.source, args.target)
    print(f"{args.target / 'ansible_collections'}: {', '.join(linked)}")


def rekey_vault(args: argparse.Namespace) -> None:
    settled = rekey.recover(args.inventory)
    if settled:
        print(f"{settled}; run rekey-vault again to change the password once more")
        return
    rekeyed = rekey.rekey(args.inventory, args.new_password_file)
    print(f"re-encrypted {len(rekeyed)} vault file(s) in {_shown(args.inventory)}; "
          f"the new password is in {vault.password_file()}")


def secret_age(args: argparse.Namespace) -> None:
    rows = age.secret_ages(inventory.load(args.inventory), vault.read_password(), datetime.now(UTC))
    table = [("INSTANCE", "SECRET", "AGE (DAYS)", "ROTATE EVERY", "STATUS")]
    table += [(r.host, r.secret, "unknown" if r.age_days is None else str(r.age_days),
               str(r.rotate_every_days), "OVERDUE" if r.overdue else "ok") for r in rows]
    _print_table(table)


def audit_unfinished(args: argparse.Namespace) -> None:
    runs = audit.unfinished(audit.read(args.log))
    if args.json:
        print(json.dumps({"runs": [asdict(run) for run in runs],
                          "instances": {instance: run.run for run in runs for instance in run.locked}}))
        return
    if not runs:
        print(f"no unfinished runs in {args.log}")
        return
    table = [("RUN", "STARTED", "OPERATOR", "SOURCE", "PLAYBOOK", "STILL LOCKED")]
    table += [(r.run, r.started, r.operator, r.source, r.playbook, ", ".join(r.locked) or "-") for r in runs]
    _print_table(table)
    print("a run listed here is still running or was killed; a later run on its instances takes over its locks")


def _print_table(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def update_vault(args: argparse.Namespace) -> None:
    if args.action == "generate":
        print(vault_update.generate(args.inventory, args.secret))
        return
    try:
        request = json.loads(sys.stdin.read())
        old, new = str(request["old"]), str(request["new"])
        rotated_at = request.get("rotated_at") or None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused('stdin must be a JSON object {"old": ..., "new": ..., "rotated_at": null}') from None
    vault_update.set_secret(args.inventory, args.host, args.secret, old, new, vault.read_password(),
                            rotated_at=str(rotated_at) if rotated_at else None)
    print(f"wrote vault_{args.secret} of {args.host}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleetdeck")
    commands = top.add_subparsers(dest="command", required=True)
    env = argparse.ArgumentParser(add_help=False)
    env.add_argument("-i", "--inventory", type=Path, default=DEFAULT_ENV,
                     help="environment directory (default: inventory/production)")

    cmd = commands.add_parser("audit", help="read the audit log of mutating playbook runs")
    cmd.add_argument("report", choices=("unfinished",), help="unfinished: runs that started and never ended")
    cmd.add_argument("--log", type=Path, default=audit.log_path(),
                     help="audit log (default: $FLEETDECK_AUDIT_LOG, else ~/.local/state/fleetdeck/audit.log)")
    cmd.add_argument("--json", action="store_true", help="as JSON: {runs: [...], instances: {instance: run}}")
    cmd.set_defaults(run=audit_unfinished)

    cmd = commands.add_parser("bootstrap-vault", parents=[env], help="create the vault password file")
    cmd.set_defaults(run=bootstrap_vault)

    cmd = commands.add_parser("add-instance", parents=[env], help="add an instance to an environment")
    cmd.add_argument("name", metavar="NAME", help="inventory host name, e.g. acme")
    cmd.add_argument("domain", metavar="DOMAIN", help="the instance's public FQDN")
    cmd.add_argument("address", metavar="ADDRESS", help="IP address or DNS name Ansible connects to")
    cmd.add_argument("--tier", type=int, choices=(1, 2), default=1,
                     help="1: managed; 2: managed and reporting to central monitoring")
    cmd.add_argument("--canary", action="store_true", help="also put the instance in the canary group")
    cmd.add_argument("--version", default="1.0.0", help="app version to pin (default 1.0.0)")
    cmd.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    cmd.add_argument("--no-host-key", action="store_true",
                     help="do not fetch and pin the SSH host key (the host is not up yet)")
    cmd.set_defaults(run=add_instance)

    cmd = commands.add_parser("set-instance", parents=[env],
                              help="change an instance's tier, canary membership, feature flags or version hold")
    cmd.add_argument("name", metavar="NAME", help="inventory host name")
    cmd.add_argument("--tier", type=int, choices=(1, 2))
    cmd.add_argument("--canary", action=argparse.BooleanOptionalAction, default=None,
                     help="put the instance in (or, --no-canary, take it out of) the canary group")
    cmd.add_argument("--features", help="comma-separated feature flags (app_features); '' for none")
    cmd.add_argument("--hold", action=argparse.BooleanOptionalAction, default=None,
                     help="hold the version (rollout_hold: upgrades skip it); --no-hold releases it")
    cmd.add_argument("--hold-reason", help="why it is held (rollout_hold_reason)")
    cmd.set_defaults(run=set_instance)

    cmd = commands.add_parser("check-inventory", parents=[env],
                              help="check every instance: settings, vaults, secrets, host keys")
    cmd.set_defaults(run=check_inventory)

    cmd = commands.add_parser("link-collections", help="link the collections requirements.yml names (and their "
                              "dependencies) from the installed ansible package for ansible.cfg's collections_path")
    cmd.add_argument("--requirements", type=Path, default=scaffold.REPO / "requirements.yml")
    cmd.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["purelib"]) / "ansible_collections",
                     help="the ansible package's collections (default: this Python's site-packages)")
    cmd.add_argument("--target", type=Path, default=Path(sys.prefix) / "collections",
                     help="where the links go, under ansible_collections/ (default: <this venv>/collections)")
    cmd.set_defaults(run=link_collections)

    cmd = commands.add_parser("drift", parents=[env], help="each instance against the inventory, key by key")
    cmd.add_argument("--limit", help="instances or groups (Ansible --limit); default: the whole fleet")
    cmd.add_argument("--json", action="store_true", help="as JSON: {instance: [{where, key, change, desired, live}]}")
    cmd.set_defaults(run=show_drift)

    cmd = commands.add_parser("import-instance", parents=[env],
                              help="take over a hand-installed instance as it runs (see fleetdeck.takeover)")
    cmd.add_argument("name", metavar="NAME", help="inventory host name to give it")
    cmd.add_argument("address", metavar="ADDRESS", help="IP address or DNS name Ansible connects to")
    cmd.add_argument("--domain", required=True, help="the instance's public FQDN")
    cmd.add_argument("--env-file", help="env file to read (default: the EnvironmentFile= lines of the app's unit)")
    cmd.add_argument("--tier", type=int, choices=(1, 2), default=1,
                     help="1: managed; 2: managed and reporting to central monitoring")
    cmd.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    cmd.add_argument("--no-backup", action="store_true", help="do not back the instance up before the check")
    cmd.set_defaults(run=import_instance)

    cmd = commands.add_parser("pull-config", parents=[env],
                              help="adopt an instance's live env values into the inventory (preview first)")
    cmd.add_argument("name", metavar="NAME", help="the instance")
    cmd.add_argument("--keys", nargs="+", metavar="KEY", help="only these keys (default: every drifted env key)")
    cmd.add_argument("--yes", action="store_true", help="write the change shown in the preview")
    cmd.set_defaults(run=pull)

    cmd = commands.add_parser("rekey-vault", parents=[env], help="change the vault password, all or none")
    cmd.add_argument("--new-password-file", type=Path,
                     help="take the new password from this file (default: generate one)")
    cmd.set_defaults(run=rekey_vault)

    cmd = commands.add_parser("secret-age", parents=[env], help="age of every instance's secrets")
    cmd.set_defaults(run=secret_age)

    cmd = commands.add_parser("vault-update", parents=[env],
                              help="new secret values and compare-and-swap writes into one vault.yml")
    cmd.add_argument("host", help="instance name (host_vars/HOST/vault.yml)")
    cmd.add_argument("action", choices=("generate", "set"),
                     help="generate: print a new value; set: stdin {old, new, rotated_at}, written if old still holds")
    cmd.add_argument("secret", help="catalog name, e.g. app_api_token")
    cmd.set_defaults(run=update_vault)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except FleetdeckError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return exc.exit_status


def _shown(path: Path) -> Path:
    """The environment as the next command (run from the repository root) should name it."""
    path = path.absolute()
    return path.relative_to(scaffold.REPO) if path.is_relative_to(scaffold.REPO) else path


if __name__ == "__main__":
    sys.exit(main())
