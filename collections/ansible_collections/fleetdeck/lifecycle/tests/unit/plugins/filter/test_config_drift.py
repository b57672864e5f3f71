"""config_drift filters and the config_files parsers they share with scripts/import-instance."""

from __future__ import annotations

import base64

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetdeck.lifecycle.plugins.filter.config_drift import (
    MASK,
    drift,
    env_strings,
    env_values,
    unit_values,
)
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.config_files import (
    ConfigFileError,
    parse_env,
    parse_unit,
)


def slurped(text):
    return {"content": base64.b64encode(text.encode()).decode(), "source": "/etc/app.env"}


def test_env_files_written_by_hand_or_by_the_role_give_the_same_values():
    by_hand = "# comment\n\nB=2\nexport A='x y'\n; other comment\nC=\"q\\\"uote\\\\d\"\n"
    by_role = '# Ansible managed\nA="x y"\nB="2"\nC="q\\"uote\\\\d"\n'
    assert parse_env(by_hand) == parse_env(by_role) == {"A": "x y", "B": "2", "C": 'q"uote\\d'}
    assert env_values(slurped(by_hand)) == parse_env(by_hand)
    assert env_values({"failed": True, "msg": "file not found"}) == {}


def test_a_line_that_is_not_name_value_is_named():
    with pytest.raises(ConfigFileError, match="line 2 is not NAME=value"):
        parse_env("A=1\nnot a setting\n")
    with pytest.raises(AnsibleFilterError, match=r"/etc/app\.env: line 1"):
        env_values(slurped("1A=x\n"))


def test_unit_keys_are_section_dot_key_and_repeated_keys_keep_every_value():
    text = "# managed\n[Unit]\nDescription=app\n[Service]\nEnvironmentFile=/a\nEnvironmentFile=/b\nUser=app\n"
    assert parse_unit(text) == {"Unit.Description": "app", "Service.EnvironmentFile": "/a\n/b", "Service.User": "app"}
    assert unit_values(text) == unit_values(slurped(text))
    with pytest.raises(AnsibleFilterError, match="line 1 is neither"):
        unit_values("User=app\n")


def test_drift_names_added_removed_and_changed_keys_and_masks_secrets():
    desired = env_strings({"PORT": 8080, "LEVEL": "INFO", "GONE": "x", "TOKEN": "old-secret"})
    live = {"PORT": "8080", "LEVEL": "DEBUG", "NEW": "y", "TOKEN": "new-secret"}
    items = drift(desired, live, "/etc/app.env", ["TOKEN"])
    assert [(i["key"], i["change"], i["desired"], i["live"]) for i in items] == [
        ("GONE", "removed", "x", None), ("LEVEL", "changed", "INFO", "DEBUG"), ("NEW", "added", None, "y"),
        ("TOKEN", "changed", MASK, MASK)]
    assert all(i["where"] == "/etc/app.env" for i in items)
    assert drift({"TOKEN": "same"}, {"TOKEN": "same"}, "f", ["TOKEN"]) == []
    with pytest.raises(AnsibleFilterError):
        drift("not a mapping", {}, "f")
