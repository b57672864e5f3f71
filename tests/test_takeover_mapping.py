"""Host-free parts of import and drift: where scripts/import-instance puts each live key, the drift table."""

import pytest
from fleetdeck import drift, scaffold, secrets_catalog, takeover
from fleetdeck.errors import Refused

PROFILE = takeover.profile(scaffold.EXAMPLE)
CATALOG = {s.name for s in secrets_catalog.load(scaffold.EXAMPLE)}


def test_profile_settings_catalog_secrets_and_pass_through():
    mapped = takeover.map_keys({"REFAPP_INSTANCE": "shop", "REFAPP_DB_PASSWORD": "pw", "REFAPP_API_TOKEN": "tok",
                                "REFAPP_API_TOKEN_PREVIOUS": "", "SHOP_MAIL": "a@b", "SHOP_SMTP_PASSWORD": "smtp"},
                               PROFILE, CATALOG)
    assert mapped.settings == {"REFAPP_INSTANCE": "shop"}
    assert mapped.secrets == {"vault_app_db_password": "pw", "vault_app_api_token": "tok"}
    assert mapped.secret_settings == {"REFAPP_DB_PASSWORD": "{{ app_db_password }}",
                                      "REFAPP_API_TOKEN": "{{ app_api_token }}"}
    # a profile secret that is no catalog secret, and an unknown secret-looking name: vault pass-through
    assert mapped.passthrough_secrets == {"REFAPP_API_TOKEN_PREVIOUS": "", "SHOP_SMTP_PASSWORD": "smtp"}
    assert mapped.passthrough == {"SHOP_MAIL": "a@b"}


def test_a_live_value_with_a_jinja_marker_is_refused():
    with pytest.raises(Refused, match="REFAPP_INSTANCE holds a Jinja marker"):
        takeover.map_keys({"REFAPP_INSTANCE": "{{ lookup('pipe', 'id') }}"}, PROFILE, CATALOG)


def test_two_env_files_must_separate_secrets_from_settings():
    mapped = takeover.map_keys({"REFAPP_INSTANCE": "shop", "REFAPP_DB_PASSWORD": "pw"}, PROFILE, CATALOG)
    split = {"/etc/a/settings.env": {"REFAPP_INSTANCE": "shop"}, "/etc/a/secrets.env": {"REFAPP_DB_PASSWORD": "pw"}}
    assert takeover._env_paths("h", split, mapped) == ("/etc/a/settings.env", "/etc/a/secrets.env")
    mixed = {"/etc/a/one.env": {"REFAPP_INSTANCE": "shop", "REFAPP_DB_PASSWORD": "pw"}, "/etc/a/two.env": {}}
    with pytest.raises(Refused, match="pass the file to take over with --env-file"):
        takeover._env_paths("h", mixed, mapped)


def test_drift_table_shows_each_key_masked_secrets_and_instances_not_compared():
    results = {"b": None, "c": [], "a": [{"where": "/etc/a.env", "key": "LEVEL", "change": "changed", "secret": False,
                                        "desired": "INFO", "live": "DEBUG"},
                                       {"where": "/etc/a.env", "key": "TOKEN", "change": "added", "secret": True,
                                        "desired": None, "live": "********"}]}
    assert drift.table(results) == [
        ("INSTANCE", "WHERE", "KEY", "CHANGE", "INVENTORY", "LIVE"),
        ("a", "/etc/a.env", "LEVEL", "changed", "INFO", "DEBUG"),
        ("a", "/etc/a.env", "TOKEN", "added", "-", "********"),
        ("b", "-", "-", "NOT COMPARED", "-", "unreachable or failed"),
        ("c", "-", "-", "none", "-", "-")]
    assert drift.drifted(results) and drift.drifted({"b": None}) and not drift.drifted({"c": []})
