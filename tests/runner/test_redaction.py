"""Redaction of vault values, without a fleet: a vault that cannot be read must not stop every run."""

from __future__ import annotations

import logging

from fleetdeck import vault
from fleetdeck.service.redaction import MASK, Redactor


def test_an_unreadable_vault_is_skipped_and_the_others_are_still_masked(tmp_path, caplog):
    password_file = tmp_path / "vault-pass"
    password_file.write_text("the password\n")
    env = tmp_path / "env"
    for host in ("acme", "globex", "initech"):
        (env / "host_vars" / host).mkdir(parents=True)
    vault.encrypt_file(env / "host_vars/acme/vault.yml", {"vault_app_api_token": "acme-token-value"},
                       b"the password")
    vault.encrypt_file(env / "host_vars/globex/vault.yml", {"vault_app_api_token": "globex-token"}, b"another")
    (env / "host_vars/initech/vault.yml").write_bytes(vault.encrypt(b"token: initech-secret: x\n", b"the password"))

    with caplog.at_level(logging.WARNING, logger="fleetdeck.service.redaction"):
        redactor = Redactor.from_inventory(env, password_file)

    assert redactor.text("acme says acme-token-value") == f"acme says {MASK}"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"not masking the values of {env}/host_vars/globex/vault.yml: cannot decrypt")
    assert warnings[1] == (f"not masking the values of {env}/host_vars/initech/vault.yml: "
                           f"{env}/host_vars/initech/vault.yml: not valid YAML at line 1, column 22: "
                           "mapping values are not allowed here")
    assert "initech-secret" not in "".join(warnings)
