"""The shipped action catalog and token storage, without a fleet (refusal rules: test_startup)."""

from __future__ import annotations

import hashlib
import json

import pytest
from fleetdeck.service.catalog import Catalog, CatalogError
from fleetdeck.service.config import PACKAGE_DIR, parse_tokens

from tests.playbook import REPO

ISSUE_ACTIONS = {
    "smoke_check",
    "deploy",
    "configure",
    "upgrade",
    "canary_upgrade",
    "canary_decision",
    "rollback",
    "backup",
    "restore",
    "restore_drill",
    "rotate_secrets",
    "restart_service",
    "install_dependencies",
    "update_binary",
    "rotate_trust",
    "drift",  # issue 16
    "compliance",  # issue 16
    "decommission",
    "dns",  # issue 19
}


def test_shipped_catalog_has_every_action_with_its_playbook():
    catalog = Catalog.load(PACKAGE_DIR / "actions.yml", REPO)
    assert set(catalog.actions) == ISSUE_ACTIONS and catalog.missing == {}
    for action in catalog.actions.values():
        assert (REPO / action.playbook).is_file()


def test_only_canary_decision_runs_without_leases():
    # A paused canary_upgrade run holds the canary's lease: the decision it waits for must not need it.
    catalog = Catalog.load(PACKAGE_DIR / "actions.yml", REPO)
    assert [name for name, action in catalog.actions.items() if not action.leases] == ["canary_decision"]
    decision = catalog.actions["canary_decision"]
    assert decision.targets == ("instance",) and decision.public()["leases"] is False
    assert decision.parameter_errors({"canary_decision": "promote"}) == []
    assert decision.parameter_errors({"canary_decision": "maybe"})[0].startswith("parameter canary_decision:")


def test_actions_whose_controller_side_work_a_node_cannot_do_are_local_only():
    # canary state beside the audit log, scripts/vault-update, the runner's own SSH key (docs/runner.md)
    catalog = Catalog.load(PACKAGE_DIR / "actions.yml", REPO)
    local_only = {name: action.public()["local_only"] for name, action in catalog.actions.items() if action.local_only}
    assert set(local_only) == {"canary_upgrade", "canary_decision", "rotate_secrets", "rotate_trust"}
    assert "scripts/vault-update" in local_only["rotate_secrets"]
    assert catalog.actions["upgrade"].public()["local_only"] is None


def test_update_binary_needs_a_pinned_version(tmp_path):
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "update_binary.yml").write_text("---\n")
    action = Catalog.load(PACKAGE_DIR / "actions.yml", tmp_path).actions["update_binary"]
    assert action.parameter_errors({}) == ["parameter (root): 'app_version' is a required property"]
    assert action.parameter_errors({"app_version": "latest"})[0].startswith(
        "parameter app_version:"
    )
    assert action.parameter_errors({"app_version": "2.3.4"}) == []


def test_catalog_entries_must_be_complete_and_closed(tmp_path):
    bad = tmp_path / "actions.yml"
    bad.write_text(
        "actions:\n  x: {playbook: a.yml, description: d, targets: [instance], mutating: true, "
        "timeout: 5, parameters: {type: object, properties: {}}}\n"
    )
    with pytest.raises(CatalogError, match="additionalProperties"):
        Catalog.load(bad, tmp_path)


def test_plaintext_tokens_are_kept_only_hashed():
    [token] = parse_tokens(
        json.dumps([{"name": "ci", "token": "Q3k9-vT2x_Lm8pW4zR7nY1bC6dF0hJ5s", "scopes": ["run:*"]}])
    )
    assert token.sha256 == hashlib.sha256(b"Q3k9-vT2x_Lm8pW4zR7nY1bC6dF0hJ5s").hexdigest()
    assert "Q3k9" not in repr(token)
