"""Read and extend a fleetdeck environment: inventory/<env>/hosts.yml and host_vars/<name>/main.yml.

This is the small, stable API other parts of fleetdeck (the runner service) build on. It never reads
vault files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleetdeck.errors import FleetdeckError, Refused

TIER_GROUPS = {1: "tier1", 2: "tier2"}
CANARY_GROUP = "canary"
# Groups add-instance puts an instance in, by its tier and canary membership.
PLACEMENT_GROUPS = frozenset({CANARY_GROUP, *TIER_GROUPS.values()})
# Groups of the fixed layout plus Ansible's implicit ones; no instance may take these names.
RESERVED_NAMES = frozenset({"all", "ungrouped", "fleet", CANARY_GROUP, *TIER_GROUPS.values()})
HOSTS_HEADER = ("# Instances of this environment. scripts/add-instance rewrites this file:\n"
                "# keep notes in host_vars/<name>/main.yml, comments here are not preserved.\n")


@dataclass(frozen=True)
class Inventory:
    path: Path
    tree: dict  # hosts.yml as parsed

    @property
    def name(self) -> str:
        return self.path.name

    def groups(self) -> dict[str, list[str]]:
        """Every group with all its hosts, nested groups flattened, including `all` and `ungrouped`."""
        direct: dict[str, set[str]] = {}
        children: dict[str, set[str]] = {}

        def collect(name: str, group: dict | None) -> None:
            group = group or {}
            direct.setdefault(name, set()).update(group.get("hosts") or {})
            kids = children.setdefault(name, set())
            for child, sub in (group.get("children") or {}).items():
                kids.add(child)
                collect(child, sub)

        def members(name: str) -> set[str]:
            return direct[name].union(*(members(child) for child in children[name]))

        collect("all", self.tree.get("all"))
        groups = {name: members(name) for name in direct}
        grouped = set().union(*(hosts for name, hosts in groups.items() if name != "all"))
        groups["ungrouped"] = groups["all"] - grouped
        return {name: sorted(hosts) for name, hosts in sorted(groups.items())}

    def hosts(self) -> list[str]:
        return self.groups()["all"]

    def exists(self, host: str) -> bool:
        """Listed in hosts.yml, or a host_vars directory of that name exists."""
        host_vars = self.path / "host_vars"
        return host in self.hosts() or (host_vars.is_dir() and host in {p.name for p in host_vars.iterdir()})

    def public_vars(self, host: str) -> dict:
        """The instance's variables in hosts.yml (given where it is listed) overridden by its
        host_vars/<host>/main.yml, as Ansible ranks them (never its vault)."""
        if host not in self.hosts():
            raise FleetdeckError(f"no instance {host!r} in environment {self.name}")
        inline: dict = {}

        def collect(group: dict | None) -> None:
            group = group or {}
            listed = (group.get("hosts") or {}).get(host)
            inline.update(listed if isinstance(listed, dict) else {})
            for child in (group.get("children") or {}).values():
                collect(child)

        collect(self.tree.get("all"))
        main = self.path / "host_vars" / host / "main.yml"
        return {**inline, **((yaml.safe_load(main.read_text()) or {}) if main.exists() else {})}

    def host_var(self, host: str, name: str):
        """`name` for `host` as Ansible ranks it, from the public files: the vars of its groups (hosts.yml `vars`,
        then group_vars/), `all` first, then by depth below `all` and by name at one depth; then its own
        (public_vars). None when nothing sets it."""
        depth: dict[str, int] = {}
        inline: dict[str, dict] = {}

        def walk(group_name: str, group: dict | None, level: int) -> None:
            group = group or {}
            depth[group_name] = max(depth.get(group_name, 0), level)
            inline.setdefault(group_name, {}).update(group.get("vars") or {})
            for child, sub in (group.get("children") or {}).items():
                walk(child, sub, level + 1)

        walk("all", self.tree.get("all"), 0)
        value = None
        mine = [g for g, hosts in self.groups().items() if host in hosts and g in depth]
        for group in sorted(mine, key=lambda g: (depth[g], g)):
            for found in (inline[group], _group_vars(self.path, group)):
                value = found.get(name, value)
        return self.public_vars(host).get(name, value)


class _TagsIgnored(yaml.SafeLoader):
    """Reads group_vars files that hold inline `!vault` values (those come out as None)."""


_TagsIgnored.add_multi_constructor("!", lambda loader, suffix, node: None)


def _group_vars(path: Path, group: str) -> dict:
    """group_vars/<group>(.yml|.yaml) and group_vars/<group>/* merged in name order; vault files skipped."""
    base = path / "group_vars"
    files = [base / f"{group}{suffix}" for suffix in ("", ".yml", ".yaml")]
    if (base / group).is_dir():
        files = sorted((base / group).iterdir())
    merged: dict = {}
    for file in files:
        if not file.is_file() or file.read_bytes().startswith(b"$ANSIBLE_VAULT;"):
            continue
        try:
            data = yaml.load(file.read_text(), Loader=_TagsIgnored)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise FleetdeckError(f"{file} is not valid YAML: {exc}") from None
        merged.update(data if isinstance(data, dict) else {})
    return merged


def load(path: str | Path) -> Inventory:
    path = Path(path).resolve()
    hosts_file = path / "hosts.yml"
    if not hosts_file.is_file():
        raise FleetdeckError(f"{hosts_file} does not exist: not a fleetdeck environment")
    try:
        tree = yaml.safe_load(hosts_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FleetdeckError(f"{hosts_file} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict) or not isinstance(tree.get("all") or {}, dict):
        raise FleetdeckError(f"{hosts_file}: expected a mapping with a top-level 'all' group")
    return Inventory(path, tree)


def with_instance(tree: dict, name: str, tier: int, canary: bool) -> dict:
    """A copy of the hosts.yml tree with `name` added to its tier group (under fleet) and maybe canary."""
    if tier not in TIER_GROUPS:
        raise Refused(f"tier {tier!r} is not one of {sorted(TIER_GROUPS)}")
    tree = copy.deepcopy(tree)
    all_children = _child(tree, "all", "children")
    tier_group = _child(_child(all_children, "fleet", "children"), TIER_GROUPS[tier])
    _child(tier_group, "hosts")[name] = {}
    if canary:
        _child(_child(all_children, CANARY_GROUP), "hosts")[name] = {}
    return tree


def dump(tree: dict) -> str:
    return HOSTS_HEADER + yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def _child(mapping: dict, *keys: str) -> dict:
    """mapping[k1][k2]..., creating empty mappings where a key is missing or null."""
    for key in keys:
        if mapping.get(key) is None:
            mapping[key] = {}
        mapping = mapping[key]
    return mapping


def without_instance(tree: dict, name: str, groups: frozenset[str] | None = None) -> dict:
    """A copy of the hosts.yml tree with `name` taken out of `groups` (default: every group)."""
    tree = copy.deepcopy(tree)

    def strip(group_name: str, group: dict | None) -> None:
        if not isinstance(group, dict):
            return
        if isinstance(group.get("hosts"), dict) and (groups is None or group_name in groups):
            group["hosts"].pop(name, None)
        for child_name, child in (group.get("children") or {}).items():
            strip(child_name, child)

    strip("all", tree.get("all"))
    return tree
