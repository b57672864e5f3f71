"""Redaction, the run environment allowlist and artifact scrubbing, without hosts (a vault that cannot be
read must not stop every run)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from fleetdeck import vault
from fleetdeck.service.executor import child_env, scrub
from fleetdeck.service.redaction import MASK, Redactor

KEY_LINES = [  # made-up multi-line secret shaped like a PEM body (no real key)
    "eXoF9+zQ/nOFORHAx/urShkvEIFxD7RvA+NqD2LPjfIhujCEy8fPnCqd2o/H0CcXXZeBpA",
    "eDbgERmnBsfzgdSA0PNTmB4miIQkbJRPoGgp1JxKRAAL6qwnM42mDxtP9SlNog0SEh6m7A",
    "bPGNx04KVYJyZp7M8jsV4FOZDOFtZoN9FLxG1buJKShnKjHhFGGKaql8FyUHr2hwpqB40Q",
    "AAAEBnQ0=",
]
KEY = "-----BEGIN FLEETDECK TEST SECRET-----\n" + "\n".join(KEY_LINES) + "\n-----END FLEETDECK TEST SECRET-----\n"
PASSWORD = 'p@ss "w/rd"&x=1+ü%2F\\end'


@pytest.fixture
def redactor():
    return Redactor([KEY, PASSWORD, "abc"])


def test_a_multi_line_value_is_masked_whole_and_line_by_line(redactor):
    assert redactor.text(f"key: {KEY}") == f"key: {MASK}"
    shown = redactor.text(f"line two is {KEY_LINES[1]}!")
    assert shown == f"line two is {MASK}!"
    # Armor lines are the same in every key; a short last line is not a secret of its own.
    assert redactor.text("-----BEGIN FLEETDECK TEST SECRET-----") == "-----BEGIN FLEETDECK TEST SECRET-----"
    assert redactor.text("AAAEBnQ0=") == "AAAEBnQ0="


def test_values_shorter_than_four_characters_are_not_masked(redactor):
    assert redactor.text("abc abcd") == "abc abcd"


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: json.dumps(s),
        lambda s: json.dumps(s, ensure_ascii=False),
        lambda s: json.dumps(json.dumps({"k": s})),
        lambda s: quote(s, safe=""),
        lambda s: quote(s),
        lambda s: quote_plus(s),
    ],
)
def test_json_and_url_forms_are_masked(redactor, encode):
    for secret in (PASSWORD, KEY, KEY_LINES[0]):
        assert secret.encode() not in redactor.text(encode(secret)).encode()
        assert MASK in redactor.text(encode(secret))


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"xyz"])
@pytest.mark.parametrize("encoder", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_is_masked_at_every_alignment(redactor, prefix, encoder):
    for secret in (PASSWORD, KEY, KEY_LINES[2]):
        encoded = encoder(prefix + secret.encode() + b"tail").decode()
        shown = redactor.text(encoded)
        assert MASK in shown
        for remains in shown.split(MASK):
            for start in range(4):
                chunk = remains[start:][: (len(remains) - start) // 4 * 4]
                assert secret.encode() not in base64.b64decode(chunk, altchars=b"-_")


def test_data_masks_keys_values_and_vault_keys(redactor):
    data = {"msg": f"pw={PASSWORD}", PASSWORD: 1, "vault_anything": "short", "n": [KEY_LINES[0]], "ok": True}
    assert redactor.data(data) == {"msg": f"pw={MASK}", MASK: 1, "vault_anything": MASK, "n": [MASK], "ok": True}


def test_from_inventory_reads_whole_file_and_inline_vaults_and_masks_the_password(tmp_path):
    password = vault.new_password()
    (tmp_path / "pass").write_text(password + "\n")
    inventory = tmp_path / "env"
    (inventory / "host_vars" / "web1").mkdir(parents=True)
    vault.encrypt_file(inventory / "host_vars" / "web1" / "vault.yml", {"vault_key": KEY}, password.encode())
    inline = vault.encrypt(b"inline-secret-value", password.encode()).decode()
    (inventory / "hosts.yml").write_text(
        "all:\n  vars:\n    token: !vault |\n" + "".join(f"      {line}\n" for line in inline.splitlines())
    )
    redactor = Redactor.from_inventory(inventory, tmp_path / "pass", also=("hub-secret-value", None))
    shown = redactor.text(f"{KEY_LINES[0]} inline-secret-value {password} hub-secret-value")
    assert shown == " ".join([MASK] * 4)


def test_child_env_is_an_allowlist():
    env = {
        "PATH": "/bin",
        "HOME": "/root",
        "ANSIBLE_CONFIG": "/srv/ansible.cfg",
        "LC_ALL": "C.UTF-8",
        "FLEETDECK_RUN_SOURCE": "runner:1",
        "FLEETDECK_RUNNER_TOKENS": "[...]",
        "FLEETDECK_RUNNER_TOKENS_FILE": "/etc/tokens",
        "FLEETDECK_HOOK_SECRET": "x",
        "FLEETDECK_HUB_SECRET_FILE": "/etc/hub",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    assert set(child_env(env)) == {"PATH", "HOME", "ANSIBLE_CONFIG", "LC_ALL", "FLEETDECK_RUN_SOURCE"}


def test_scrub_keeps_only_command_status_and_rc(tmp_path: Path):
    artifacts = tmp_path / "run" / "artifacts" / "artifacts"
    (artifacts / "job_events").mkdir(parents=True)
    (tmp_path / "run" / "env").mkdir()
    for name in ("command", "status", "rc", "job_events/1-partial.json", "stdout", "fact_cache"):
        (artifacts / name).write_text("x")
    (tmp_path / "run" / "env" / "settings").write_text("{}")
    scrub(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file()) == ["command", "rc", "status"]


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
