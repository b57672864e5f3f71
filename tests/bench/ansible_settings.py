"""The two Ansible settings the benchmarks compare: fleetdeck's ansible.cfg, and stock Ansible with only
what fleetdeck's playbooks cannot run without (where roles, collections and the vault password are, the
audit callback, the inventory files to ignore)."""

import configparser
from pathlib import Path

from tests.playbook import REPO

PROJECT = REPO / "ansible.cfg"
PATH_LISTS = ("roles_path", "collections_path")
KEPT = (*PATH_LISTS, "collections_scan_sys_path", "vault_identity_list", "inventory_ignore_patterns")
STOCK_CALLBACKS = "fleetdeck.lifecycle.audit"


def write_stock_config(path: Path) -> Path:
    """A config file at `path` with every other setting at Ansible's default (forks 5, linear strategy,
    no pipelining, implicit fact gathering with all subsets the plays ask for, interpreter discovery)."""
    project = configparser.ConfigParser(interpolation=None)
    project.read(PROJECT)
    kept = {key: project["defaults"][key] for key in KEPT}
    # ansible.cfg's relative paths are relative to the repository, this file may live elsewhere.
    for key in PATH_LISTS:
        kept[key] = ":".join(str(REPO / part) for part in kept[key].split(":"))
    identity, script = kept["vault_identity_list"].split("@", 1)
    kept["vault_identity_list"] = f"{identity}@{REPO / script}"
    kept["callbacks_enabled"] = STOCK_CALLBACKS
    path.write_text("[defaults]\n" + "".join(f"{key} = {value}\n" for key, value in kept.items()))
    return path
