"""The action catalog: which playbooks may run, with which typed parameters, on which targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

TARGET_KINDS = ("instance", "group", "fleet")
ENTRY_SCHEMA = {
    "type": "object",
    "required": ["playbook", "description", "targets", "mutating", "timeout", "parameters"],
    "additionalProperties": False,
    "properties": {
        "playbook": {"type": "string", "pattern": r"^[\w./-]+\.ya?ml$"},
        "description": {"type": "string", "minLength": 1},
        "targets": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": list(TARGET_KINDS)},
        },
        "mutating": {"type": "boolean"},
        "leases": {"type": "boolean"},
        "local_only": {"type": "string", "minLength": 1},
        "timeout": {"type": "integer", "minimum": 1},
        "parameters": {
            "type": "object",
            "required": ["type", "properties", "additionalProperties"],
            "properties": {"type": {"const": "object"}, "additionalProperties": {"const": False}},
        },
    },
}


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class Action:
    name: str
    playbook: str
    description: str
    targets: tuple[str, ...]
    mutating: bool
    timeout: int
    parameters: dict
    # False: a run takes no per-instance lease (it only hands something to another run, e.g. canary_decision).
    leases: bool = True
    # Why a run must not go to an execution node (its playbook needs the runner's own machine); None: it may.
    local_only: str | None = None

    def parameter_errors(self, params: dict) -> list[str]:
        """Every violation of the parameter schema, each naming the offending parameter."""
        validator = Draft202012Validator(self.parameters)
        messages = []
        for error in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in error.absolute_path)
            if error.validator == "additionalProperties":
                unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
                messages.append(
                    f"unknown parameter(s) {', '.join(unknown)}; "
                    f"{self.name} accepts: {', '.join(sorted(self.parameters['properties'])) or 'none'}"
                )
            else:
                messages.append(f"parameter {where or '(root)'}: {error.message}")
        return messages

    def public(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "playbook": self.playbook,
            "targets": list(self.targets),
            "mutating": self.mutating,
            "leases": self.leases,
            "local_only": self.local_only,
            "timeout": self.timeout,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class Catalog:
    actions: dict[str, Action]
    missing: dict[str, str]  # action name -> playbook path not found in the project

    @classmethod
    def load(cls, path: Path, project_dir: Path) -> Catalog:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("actions"), dict):
            raise CatalogError(f"{path}: needs a top-level `actions` mapping")
        entry_validator = Draft202012Validator(ENTRY_SCHEMA)
        actions, missing = {}, {}
        for name, entry in data["actions"].items():
            errors = [e.message for e in entry_validator.iter_errors(entry)]
            if errors:
                raise CatalogError(f"{path}: action {name}: {'; '.join(errors)}")
            Draft202012Validator.check_schema(entry["parameters"])
            action = Action(
                name=name,
                playbook=entry["playbook"],
                description=entry["description"],
                targets=tuple(entry["targets"]),
                mutating=entry["mutating"],
                timeout=entry["timeout"],
                parameters=entry["parameters"],
                leases=entry.get("leases", True),
                local_only=entry.get("local_only"),
            )
            if (project_dir / action.playbook).is_file():
                actions[name] = action
            else:
                missing[name] = action.playbook
        return cls(actions, missing)
