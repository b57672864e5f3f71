"""rotate_secrets.yml on real hosts (overlap, revocation, database password, rollback on a failed
verification) and the controller-side vault writer it uses (runner/fleetdeck/vault_update.py)."""

import json
import os
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fleetdeck import secrets_catalog, vault, vault_update
from fleetdeck.errors import FleetdeckError, Refused

from tests.deployment import Deployment
from tests.playbook import REPO

FLEET_SIZE = 3
EXAMPLE = REPO / "inventory" / "example"


# --- the vault writer, without hosts ---------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    env = tmp_path / "env"
    shutil.copytree(EXAMPLE / "group_vars", env / "group_vars")
    (env / "host_vars" / "acme").mkdir(parents=True)
    password = b"unit-test-password"
    vault.encrypt_file(env / "host_vars" / "acme" / "vault.yml",
                       {"vault_app_api_token": "old-token-0123456789", "vault_app_db_password": "old-pw-0123456789",
                        secrets_catalog.ROTATED_AT: {"app_api_token": "2020-01-01T00:00:00Z",
                                             "app_db_password": "2020-01-01T00:00:00Z"}}, password)
    return env, password


def test_generate_follows_the_catalog(env):
    path, _ = env
    token = vault_update.generate(path, "app_api_token")
    password = vault_update.generate(path, "app_db_password")
    assert len(token) == 48 and set(token) <= set(secrets_catalog.ALPHABETS["urlsafe"])
    assert len(password) == 32 and password.isalnum()
    with pytest.raises(Refused, match="not in the secret catalog"):
        vault_update.generate(path, "nope")


def test_set_is_a_stamped_compare_and_swap(env):
    path, password = env
    file = path / "host_vars" / "acme" / "vault.yml"
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    vault_update.set_secret(path, "acme", "app_api_token", "old-token-0123456789", "new-token-0123456789",
                            password, now=now)
    data = vault.decrypt_file(file, password)
    assert data["vault_app_api_token"] == "new-token-0123456789"
    assert data["vault_app_db_password"] == "old-pw-0123456789"
    assert data[secrets_catalog.ROTATED_AT] == {"app_api_token": "2026-01-02T03:04:05Z",
                                        "app_db_password": "2020-01-01T00:00:00Z"}
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not [p for p in file.parent.iterdir() if p.name != "vault.yml"]  # no temporary file left
    # Repeating the same write is a no-op; a write from a stale value is refused and changes nothing.
    vault_update.set_secret(path, "acme", "app_api_token", "old-token-0123456789", "new-token-0123456789", password)
    before = file.read_bytes()
    with pytest.raises(FleetdeckError, match="not the value this rotation started from"):
        vault_update.set_secret(path, "acme", "app_api_token", "stale-0123456789", "other-0123456789", password)
    assert file.read_bytes() == before
    # A rollback puts the old value and its old stamp back.
    vault_update.set_secret(path, "acme", "app_api_token", "new-token-0123456789", "old-token-0123456789",
                            password, rotated_at="2020-01-01T00:00:00Z")
    assert vault.decrypt_file(file, password)[secrets_catalog.ROTATED_AT]["app_api_token"] == "2020-01-01T00:00:00Z"


def test_command_line_reads_values_from_stdin_only(env, tmp_path):
    path, password = env
    pass_file = tmp_path / "pass"
    pass_file.write_bytes(password)
    run_env = {**os.environ, "FLEETDECK_VAULT_PASSWORD_FILE": str(pass_file)}
    cmd = [str(REPO / "scripts" / "vault-update"), "-i", str(path), "acme"]
    new = subprocess.run([*cmd, "generate", "app_db_password"], env=run_env, capture_output=True, text=True,
                         check=True).stdout.strip()
    ok = subprocess.run([*cmd, "set", "app_db_password"], env=run_env, capture_output=True, text=True,
                        input=json.dumps({"old": "old-pw-0123456789", "new": new}))
    assert ok.returncode == 0 and new not in ok.stdout + ok.stderr
    assert vault.decrypt_file(path / "host_vars" / "acme" / "vault.yml", password)["vault_app_db_password"] == new
    bad = subprocess.run([*cmd, "set", "app_db_password"], env=run_env, capture_output=True, text=True,
                         input="not json")
    assert bad.returncode == 2 and "stdin must be a JSON object" in bad.stderr


# --- rotation on the fleet --------------------------------------------------------------------

TOKEN_CHECK = "curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {}' http://127.0.0.1:8080/whoami"


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    # The OS baseline (common) is test_deploy's; rotation needs the app only.
    return Deployment.deployed(fleet, tmp_path_factory.mktemp("rotation"), "--skip-tags", "common")


def vaults(deployment) -> dict[str, dict]:
    password = vault.read_password(Path(deployment.env["FLEETDECK_VAULT_PASSWORD_FILE"]))
    return {i: vault.decrypt_file(deployment.inventory / "host_vars" / i / "vault.yml", password)
            for i in deployment.instances}


def answers(deployment, instance, token) -> str:
    return deployment.on(instance, TOKEN_CHECK.format(token))


def db_login(deployment, instance, password) -> bool:
    proc = deployment.fleet.ssh(deployment.instances[instance],
                                f"PGPASSWORD='{password}' psql -h 127.0.0.1 -U refapp -d refapp -Atc 'select 1'",
                                check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "1"


def test_rotation_of_every_secret_in_batches(deployment):
    old = vaults(deployment)
    result = deployment.playbook("rotate_secrets.yml", "-e", '{"fleetdeck_serial": [1, 2]}')
    assert result.rc == 0, result.output
    new = vaults(deployment)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for instance in deployment.instances:
        for name in ("app_api_token", "app_db_password"):
            assert new[instance][f"vault_{name}"] != old[instance][f"vault_{name}"]
            assert new[instance][secrets_catalog.ROTATED_AT][name].startswith(today)
        health = deployment.health(instance)
        assert health["status"] == "ok" and health["database"] == "reachable"
        assert answers(deployment, instance, new[instance]["vault_app_api_token"]) == "200"
        assert answers(deployment, instance, old[instance]["vault_app_api_token"]) == "401"
        assert deployment.on(instance, "grep -c . /opt/refapp/shared/config/secrets.env").strip() == "4"
        assert 'REFAPP_API_TOKEN_PREVIOUS=""' in deployment.on(instance, "cat /opt/refapp/shared/config/secrets.env")
        assert db_login(deployment, instance, new[instance]["vault_app_db_password"])
        assert not db_login(deployment, instance, old[instance]["vault_app_db_password"])
    # Batches like an upgrade: inst1 alone, then the other two.
    assert result.output.count("PLAY [Rotate instance secrets]") == 2
    for text in [result.output] + [deployment.on(i, "journalctl --no-pager -o cat") for i in deployment.instances]:
        for values in list(old.values()) + list(new.values()):
            for key in ("vault_app_api_token", "vault_app_db_password"):
                assert values[key] not in text
    # The env files hold exactly what vault.yml now says: a deploy would converge without changes.
    for instance in deployment.instances:
        env = deployment.on(instance, "cat /opt/refapp/shared/config/secrets.env")
        assert f'REFAPP_API_TOKEN="{new[instance]["vault_app_api_token"]}"' in env
        assert f'REFAPP_DB_PASSWORD="{new[instance]["vault_app_db_password"]}"' in env


def test_failed_verification_leaves_the_old_working_secrets(deployment):
    before = vaults(deployment)
    pool = ThreadPoolExecutor(2)
    token = pool.submit(deployment.playbook, "rotate_secrets.yml", "--limit", "inst3", "-e", "secrets=app_api_token",
                        "-e", "secrets_rotation_whoami_url=http://127.0.0.1:8080/no-such-endpoint")
    password = pool.submit(deployment.playbook, "rotate_secrets.yml", "--limit", "inst2",
                           "-e", "secrets=app_db_password",
                           "-e", "secrets_rotation_health_url=http://127.0.0.1:8080/no-such-endpoint")
    token, password = token.result(), password.result()
    assert token.rc != 0 and password.rc != 0
    assert "rotation of app_api_token on inst3 FAILED and was rolled back" in token.output
    assert "answered 404" in token.output
    assert "rotation of app_db_password on inst2 FAILED and was rolled back" in password.output
    assert vaults(deployment) == before  # vault.yml unchanged, stamps included
    assert answers(deployment, "inst3", before["inst3"]["vault_app_api_token"]) == "200"
    assert db_login(deployment, "inst2", before["inst2"]["vault_app_db_password"])
    for instance in ("inst2", "inst3"):
        health = deployment.health(instance)
        assert health["status"] == "ok" and health["database"] == "reachable"
        assert 'REFAPP_API_TOKEN_PREVIOUS=""' in deployment.on(instance, "cat /opt/refapp/shared/config/secrets.env")
    for text in (token.output, password.output):
        for values in before.values():
            assert values["vault_app_api_token"] not in text and values["vault_app_db_password"] not in text


def test_unknown_secret_is_refused(deployment):
    result = deployment.playbook("rotate_secrets.yml", "--limit", "inst1", "-e", "secrets=nope")
    assert result.rc != 0 and "secrets to rotate must be catalog names" in result.output
