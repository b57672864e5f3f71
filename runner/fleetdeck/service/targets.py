"""A run's target is an exact inventory name: a host (instance), a group, or `all` (the fleet)."""

from __future__ import annotations

from pathlib import Path

from fleetdeck import inventory

from .catalog import Action
from .errors import ApiError


def resolve(inventory_path: Path, action: Action, target: object) -> list[str]:
    """The instances a run on `target` touches; 422 when the target is no inventory name or not allowed."""
    if not isinstance(target, str) or not target:
        raise ApiError(422, "invalid_target", "target must be an inventory host or group name")
    inv = inventory.load(inventory_path)
    groups = inv.groups()
    if target == "all":
        kind, instances = "fleet", groups["all"]
    elif target in groups:
        kind, instances = "group", groups[target]
    elif target in inv.hosts():
        kind, instances = "instance", [target]
    else:
        raise ApiError(
            422, "unknown_target", f"target {target!r} is neither a host nor a group of the inventory"
        )
    if kind not in action.targets:
        raise ApiError(
            422,
            "target_not_allowed",
            f"{action.name} may target {', '.join(action.targets)}; {target!r} is a {kind}",
        )
    if not instances:
        raise ApiError(422, "empty_target", f"group {target!r} has no hosts")
    return instances
