"""One home for each concept, checked without hosts: the version pattern, the action names (catalog, playbook
file, audit `action` field) and the tables in docs/runner.md and README.md that describe the catalog."""

from __future__ import annotations

import re

import pytest
import yaml
from fleetdeck import validate
from fleetdeck.service.catalog import Catalog
from fleetdeck.service.config import PACKAGE_DIR

from tests.playbook import REPO

CATALOG = Catalog.load(PACKAGE_DIR / "actions.yml", REPO)
AUDIT_VAR = "fleetdeck_audit_action"


def table_rows(path, header):
    """The cells of each row of the markdown table that starts with `header`."""
    lines = path.read_text().splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_version_pattern_has_one_definition():
    catalog = yaml.safe_load((PACKAGE_DIR / "actions.yml").read_text())
    app_vars = yaml.safe_load((REPO / "roles" / "app" / "vars" / "main.yml").read_text())
    assert catalog["definitions"]["version"]["pattern"] == validate.VERSION_PATTERN
    assert app_vars["_app_version_pattern"] == validate.VERSION_PATTERN
    assert "_app_version_pattern" in (REPO / "roles" / "app" / "tasks" / "preflight.yml").read_text()


@pytest.mark.parametrize(
    ("version", "valid"),
    [("1.2.3", True), ("0.10.0-rc.1+build.5", True), ("1.2", False), ("01.2.3", False), ("1.2.3.4", False),
     ("v1.2.3", False), ("1.2.3-", False)],
)
def test_version_pattern_means_the_same_to_python_and_to_the_catalog(version, valid):
    assert bool(validate.VERSION_RE.fullmatch(version)) is valid
    upgrade = CATALOG.actions["upgrade"]
    assert (upgrade.parameter_errors({"app_version": version}) == []) is valid


def _audit_names(playbook):
    """fleetdeck_audit_action of each play, following import_playbook (whose vars override the plays')."""
    names = []
    for entry in yaml.safe_load(playbook.read_text()):
        imported = entry.get("ansible.builtin.import_playbook")
        if imported:
            inner = _audit_names(playbook.parent / imported)
            names += [entry.get("vars", {}).get(AUDIT_VAR, name) for name in inner]
        else:
            names.append(entry.get("vars", {}).get(AUDIT_VAR))
    return names


@pytest.mark.parametrize("name", sorted(CATALOG.actions))
def test_action_has_one_name_across_catalog_playbook_and_audit(name):
    action = CATALOG.actions[name]
    assert action.playbook == f"playbooks/{name}.yml"
    audited = _audit_names(REPO / action.playbook)
    assert audited == [name if action.mutating else None] * len(audited)


def test_runner_doc_lists_every_action_with_its_playbook_and_parameters():
    rows = table_rows(REPO / "docs" / "runner.md", "| Action | Playbook | Parameters |")
    documented = {re.fullmatch(r"`(\w+)`", row[0])[1]: row for row in rows}
    assert sorted(documented) == sorted(CATALOG.actions)
    for name, (_, playbook, parameters) in documented.items():
        action = CATALOG.actions[name]
        assert playbook.startswith(f"`{action.playbook}`"), name
        properties = action.parameters["properties"]
        assert set(re.findall(r"`(\w+)`", parameters)) == set(properties), name
        assert (parameters == "—") == (not properties), name
        for required in action.parameters.get("required", []):
            assert f"`{required}` (required)" in parameters, name


def test_readme_describes_every_playbook():
    rows = table_rows(REPO / "README.md", "| playbook | what it does |")
    documented = [re.match(r"`([\w-]+\.yml)", row[0])[1] for row in rows]
    assert sorted(documented) == sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))
    assert {f"playbooks/{name}" for name in documented} >= {a.playbook for a in CATALOG.actions.values()}
