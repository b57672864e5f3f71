"""The Ansible collections fleetdeck uses: those requirements.yml names and what they depend on, linked from the
pinned `ansible` package's copies into the directory ansible.cfg's collections_path names, and nothing else.

Why not the whole package: Mitogen puts every collection it finds on the search path of each task that runs a
collection module; the package holds 92, and that cost about 12% of the controller's CPU in an idempotent
deploy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from fleetdeck.errors import FleetdeckError


def _version(collection: Path) -> tuple[str, dict[str, str]]:
    """(version, dependencies) from the collection's MANIFEST.json."""
    try:
        info = json.loads((collection / "MANIFEST.json").read_text())["collection_info"]
    except (OSError, ValueError, KeyError) as exc:
        raise FleetdeckError(f"{collection}: not an installed collection ({exc})") from None
    return info["version"], info.get("dependencies") or {}


def link(requirements: Path, source: Path, target: Path) -> list[str]:
    """Link each collection of `requirements` (pinned versions) and its dependencies from `source` (an
    ansible_collections directory) into `target`/ansible_collections, replacing what was linked before.
    Returns "namespace.name version" per collection."""
    pinned = {entry["name"]: str(entry["version"]) for entry in yaml.safe_load(requirements.read_text())["collections"]}
    wanted, linked = list(pinned), {}
    while wanted:
        name = wanted.pop()
        if name in linked:
            continue
        collection = source / Path(*name.split("."))
        version, dependencies = _version(collection)
        if name in pinned and version != pinned[name]:
            raise FleetdeckError(f"{requirements}: {name} is pinned to {pinned[name]}, but the installed ansible "
                                 f"package has {version} ({collection}); change the pin or the ansible package")
        linked[name] = (collection, version)
        wanted.extend(dependencies)
    root = target / "ansible_collections"
    for old in root.glob("*/*"):
        if old.is_symlink():
            old.unlink()
    for name, (collection, _) in linked.items():
        link_path = root / Path(*name.split("."))
        link_path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(collection, link_path)
    return [f"{name} {version}" for name, (_, version) in sorted(linked.items())]
