"""Environments, instances and their vaults: the real commands against tmp environments and real hosts.

Run with FLEETDECK_TEST_FLEET=inv so this module's fleet never collides with other runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.playbook import BIN, REPO

sys.path.insert(0, str(REPO / "runner"))
from fleetdeck import files, inventory, rekey, scaffold, secrets_catalog, vault
from fleetdeck.errors import FleetdeckError

FLEET_SIZE = 2
EXAMPLE = REPO / "inventory" / "example"
EXAMPLE_PASSWORD = EXAMPLE / "EXAMPLE-VAULT-PASSWORD"


@pytest.fixture
def password_file(tmp_path, monkeypatch):
    """A bootstrapped vault password file, also seen by this process (fleetdeck.vault)."""
    path = tmp_path / "config" / "fleetdeck" / "vault-pass"
    monkeypatch.setenv("FLEETDECK_VAULT_PASSWORD_FILE", str(path))
    assert run("bootstrap-vault").returncode == 0
    return path


@pytest.fixture
def env(tmp_path, password_file):
    """An environment with two instances whose hosts are not up (no host keys)."""
    path = tmp_path / "inventory" / "staging"
    assert run("add-instance", "acme", "acme.example.com", "192.0.2.10", "--canary", "--no-host-key",
               "-i", str(path)).returncode == 0
    assert run("add-instance", "globex", "app.globex.example", "192.0.2.20", "--tier", "2",
               "--no-host-key", "-i", str(path)).returncode == 0
    return path


def run(command: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / command), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file (hidden ones too) under root, with its content and mode."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() + oct(p.stat().st_mode).encode()
            for p in sorted(root.rglob("*")) if p.is_file()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["Acme", "a.example.com", "192.0.2.1"], "NAME 'Acme' must start with a lowercase letter"),
    (["1acme", "a.example.com", "192.0.2.1"], "NAME '1acme' must start with a lowercase letter"),
    (["acme_1", "a.example.com", "192.0.2.1"], "contain only lowercase letters, digits and '-'"),
    (["a" * 64, "a.example.com", "192.0.2.1"], "is 64 characters long; at most 63"),
    (["canary", "a.example.com", "192.0.2.1"], "NAME 'canary' is a reserved group name"),
    (["all", "a.example.com", "192.0.2.1"], "NAME 'all' is a reserved group name"),
    (["acme", "localhost", "192.0.2.1"], "DOMAIN 'localhost' is not a fully qualified domain name: it has a"),
    (["acme", "a-.example.com", "192.0.2.1"], "label 'a-' must be 1-63 letters"),
    (["acme", "a_b.example.com", "192.0.2.1"], "label 'a_b' must be 1-63"),
    (["acme", "a..example.com", "192.0.2.1"], "label '' must be 1-63"),
    (["acme", "a.example.com", "192.0.2.256"], "ADDRESS '192.0.2.256' is neither an IPv4/IPv6 address"),
    (["acme", "a.example.com", "fe80::zz"], "ADDRESS 'fe80::zz' is neither"),
    (["acme", "a.example.com", "host name"], "label 'host name' must be"),
    (["acme", "a.example.com", "192.0.2.1", "--version", "1.0"], "version '1.0' is not MAJOR.MINOR.PATCH"),
    (["acme", "a.example.com", "192.0.2.1", "--port", "0"], "port 0 is outside 1-65535"),
    (["acme", "a.example.com", "192.0.2.1", "--tier", "3"], "argument --tier: invalid choice: 3"),
])
def test_invalid_input_is_refused_and_nothing_is_written(tmp_path, password_file, args, message):
    env = tmp_path / "inventory" / "prod"
    proc = run("add-instance", *args, "-i", str(env))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not env.exists()


def test_valid_inputs_are_canonicalised():
    from fleetdeck import validate
    assert validate.domain("App.Example.COM.") == "app.example.com"
    assert validate.address("2001:DB8::0:1") == "2001:db8::1"
    assert validate.address("db-1.internal") == "db-1.internal"
    assert validate.version("2.10.0-rc.1+build.5") == "2.10.0-rc.1+build.5"


# -- vault password file ---------------------------------------------------------------------------

def test_bootstrap_vault_creates_a_private_file_once(tmp_path):
    config = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(config), "FLEETDECK_VAULT_PASSWORD_FILE": ""}
    first = run("bootstrap-vault", env=env)
    path = config / "fleetdeck" / "vault-pass"
    assert first.returncode == 0, first.stderr
    assert str(path) in first.stdout
    assert "vault_identity_list = fleetdeck@scripts/vault-pass-client" in first.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    password = path.read_bytes()
    assert len(password.strip()) >= 32

    second = run("bootstrap-vault", env=env)
    assert second.returncode == 0
    assert "already exists; left unchanged" in second.stdout
    assert path.read_bytes() == password
    # scripts/vault-pass-client, which Ansible runs, finds the same file.
    client = subprocess.run([str(REPO / "scripts" / "vault-pass-client")], capture_output=True,
                            env={**os.environ, **env}, check=True)
    assert client.stdout == password


def test_bootstrap_vault_killed_midway_leaves_no_password_file(tmp_path):
    path = tmp_path / "vault-pass"
    killed = run("bootstrap-vault", env={"FLEETDECK_VAULT_PASSWORD_FILE": str(path),
                                         "FLEETDECK_TEST_CRASH_AT": "write_new:written"})
    assert killed.returncode == -9
    # No empty password file that the next run would keep as it is: the next run creates a whole one.
    assert not path.exists()
    again = run("bootstrap-vault", env={"FLEETDECK_VAULT_PASSWORD_FILE": str(path)})
    assert "created the vault password file" in again.stdout, again.stderr
    assert len(path.read_bytes().strip()) >= 32


def test_a_new_file_is_never_seen_empty_or_partial(tmp_path):
    data = os.urandom(1 << 20)
    names = [f"file{n}" for n in range(20)]
    sizes = []
    done = threading.Event()

    def read():
        while not done.is_set():
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(len((tmp_path / name).read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for name in names:
            files.write_new(tmp_path / name, data, 0o600)
    finally:
        done.set()
        reader.join()
    assert sizes and set(sizes) == {len(data)}
    with pytest.raises(FileExistsError):
        files.write_new(tmp_path / names[0], b"other")
    assert (tmp_path / names[0]).read_bytes() == data
    assert stat.S_IMODE((tmp_path / names[0]).stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)  # nothing left beside them


def test_bootstrap_vault_refuses_a_path_inside_the_repository():
    proc = run("bootstrap-vault", env={"FLEETDECK_VAULT_PASSWORD_FILE": str(REPO / ".vault-pass-test")})
    assert proc.returncode == 1
    assert "inside the repository" in proc.stderr
    assert not (REPO / ".vault-pass-test").exists()


def test_add_instance_needs_the_vault_password_file(tmp_path):
    env = tmp_path / "prod"
    proc = run("add-instance", "acme", "acme.example.com", "192.0.2.10", "--no-host-key", "-i", str(env),
               env={"FLEETDECK_VAULT_PASSWORD_FILE": str(tmp_path / "missing")})
    assert proc.returncode == 1
    assert f"no vault password file at {tmp_path / 'missing'} (run scripts/bootstrap-vault" in proc.stderr
    assert not env.exists()


# -- add-instance ----------------------------------------------------------------------------------

def test_a_new_environment_gets_the_fixed_layout(env, password_file):
    inv = inventory.load(env)
    assert inv.groups() == {"all": ["acme", "globex"], "canary": ["acme"], "fleet": ["acme", "globex"],
                            "tier1": ["acme"], "tier2": ["globex"], "ungrouped": []}
    assert inv.public_vars("globex") == {"ansible_host": "192.0.2.20", "app_domain": "app.globex.example",
                                         "fleetdeck_tier": 2, "app_version": "1.0.0", "app_features": []}
    for name in ("main.yml", "secrets.yml"):
        assert (env / "group_vars/all" / name).read_text() == (EXAMPLE / "group_vars/all" / name).read_text()
    group_vars = yaml.safe_load((env / "group_vars/all/main.yml").read_text())
    assert group_vars["ansible_ssh_common_args"] == ("-o UserKnownHostsFile={{ inventory_dir }}/known_hosts "
                                                     "-o StrictHostKeyChecking=yes")
    assert group_vars["app_api_token"] == "{{ vault_app_api_token }}"


def test_vault_file_is_encrypted_private_and_readable_by_ansible(env, password_file, tmp_path):
    path = env / "host_vars/acme/vault.yml"
    assert path.read_text().startswith("$ANSIBLE_VAULT;1.2;AES256;fleetdeck\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = subprocess.run([str(BIN / "ansible-vault"), "view", "--vault-id", f"fleetdeck@{password_file}",
                           str(path)], capture_output=True, text=True, cwd=tmp_path, check=True)
    values = yaml.safe_load(view.stdout)
    for secret in secrets_catalog.load(env):
        value = values[secret.vault_var]
        assert len(value) == secret.length
        assert set(value) <= set(secrets_catalog.ALPHABETS[secret.alphabet])
        assert values[secrets_catalog.ROTATED_AT][secret.name].endswith("Z")
    assert values != vault.decrypt_file(env / "host_vars/globex/vault.yml", vault.read_password())


def test_wrong_vault_password_is_a_clear_error(env, tmp_path):
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not the password\n")
    proc = run("secret-age", "-i", str(env), env={"FLEETDECK_VAULT_PASSWORD_FILE": str(wrong)})
    assert proc.returncode == 1
    assert f"cannot decrypt {env}/host_vars/acme/vault.yml with this vault password" in proc.stderr


def test_an_existing_instance_is_refused(env, password_file):
    before = snapshot(env)
    proc = run("add-instance", "acme", "other.example.com", "192.0.2.99", "--no-host-key", "-i", str(env))
    assert proc.returncode == 2
    assert f"instance 'acme' already exists in {env}" in proc.stderr
    (env / "host_vars/initech").mkdir()
    proc = run("add-instance", "initech", "a.example.com", "192.0.2.30", "--no-host-key", "-i", str(env))
    assert proc.returncode == 2
    assert "instance 'initech' already exists" in proc.stderr
    (env / "host_vars/initech").rmdir()
    assert snapshot(env) == before


def test_an_unreachable_address_writes_nothing(env, password_file, tmp_path):
    port = closed_port()
    before = snapshot(env)
    proc = run("add-instance", "initech", "initech.example.com", "127.0.0.1", "--port", str(port),
               "-i", str(env))
    assert proc.returncode == 1
    assert f"cannot reach 127.0.0.1 port {port} to fetch its SSH host key: Connection refused" in proc.stderr
    assert snapshot(env) == before
    fresh = tmp_path / "fresh"
    proc = run("add-instance", "initech", "initech.example.com", "127.0.0.1", "--port", str(port),
               "-i", str(fresh))
    assert proc.returncode == 1
    assert not fresh.exists()


@pytest.mark.parametrize("step", scaffold.STEPS)
def test_add_instance_is_all_or_nothing_when_killed(env, password_file, step):
    before = snapshot(env)
    proc = run("add-instance", "initech", "initech.example.com", "192.0.2.30", "--no-host-key",
               "-i", str(env), env={"FLEETDECK_TEST_CRASH_AT": step})
    assert proc.returncode == -9
    committed = step == "add:hosts.yml"
    # What Ansible sees is decided by hosts.yml alone: the instance is in it only once complete.
    assert ("initech" in inventory.load(env).hosts()) is committed
    scaffold.recover(env)  # what the next add-instance does first
    if committed:
        assert inventory.load(env).public_vars("initech")["app_domain"] == "initech.example.com"
        assert vault.decrypt_file(env / "host_vars/initech/vault.yml", vault.read_password())
        assert not list(env.glob(".*"))
    else:
        assert snapshot(env) == before


def test_a_new_environment_is_created_in_one_step(tmp_path, password_file):
    fresh = tmp_path / "inventory" / "fresh"
    proc = run("add-instance", "acme", "acme.example.com", "192.0.2.10", "--no-host-key", "-i", str(fresh),
               env={"FLEETDECK_TEST_CRASH_AT": "add:staged"})
    assert proc.returncode == -9
    assert not fresh.exists()
    proc = run("add-instance", "acme", "acme.example.com", "192.0.2.10", "--no-host-key", "-i", str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert inventory.load(fresh).hosts() == ["acme"]
    assert sorted(p.name for p in fresh.parent.iterdir()) == [".fresh.lock", "fresh"]


# -- rekey-vault -----------------------------------------------------------------------------------

def vault_contents(env: Path, password: bytes) -> dict[str, dict]:
    return {p.parent.name: vault.decrypt_file(p, password) for p in sorted(env.glob("host_vars/*/vault.yml"))}


def test_rekey_changes_every_vault_and_the_password(env, password_file, tmp_path):
    old = password_file.read_bytes().strip()
    contents = vault_contents(env, old)
    new_file = tmp_path / "new-pass"
    new_file.write_text("a new password for this test\n")
    proc = run("rekey-vault", "-i", str(env), "--new-password-file", str(new_file))
    assert proc.returncode == 0, proc.stderr
    assert "re-encrypted 2 vault file(s)" in proc.stdout
    assert password_file.read_text() == "a new password for this test\n"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert vault_contents(env, b"a new password for this test") == contents
    with pytest.raises(FleetdeckError, match="cannot decrypt"):
        vault_contents(env, old)
    assert not list(env.rglob(".*vault*")) and not (env / rekey.JOURNAL).exists()
    assert sorted(p.name for p in password_file.parent.iterdir()) == ["vault-pass"]

    proc = run("rekey-vault", "-i", str(env))  # generated password
    assert proc.returncode == 0, proc.stderr
    assert vault_contents(env, password_file.read_bytes().strip()) == contents


def test_rekey_is_all_or_none(env, password_file):
    damaged = env / "host_vars/globex/vault.yml"
    damaged.write_text(damaged.read_text().replace("a", "b"))
    before, password = snapshot(env), password_file.read_bytes()
    proc = run("rekey-vault", "-i", str(env))
    assert proc.returncode == 1
    assert f"cannot decrypt {damaged}" in proc.stderr
    assert snapshot(env) == before
    assert password_file.read_bytes() == password


@pytest.mark.parametrize("step", rekey.STEPS)
def test_an_interrupted_rekey_is_settled_by_the_next_run(env, password_file, step):
    old = password_file.read_bytes().strip()
    contents = vault_contents(env, old)
    proc = run("rekey-vault", "-i", str(env), env={"FLEETDECK_TEST_CRASH_AT": step})
    assert proc.returncode == -9
    proc = run("rekey-vault", "-i", str(env))
    assert proc.returncode == 0, proc.stderr
    switched = step != "rekey:staged"
    assert ("completed an interrupted rekey" if switched else "discarded the leftovers") in proc.stdout
    current = password_file.read_bytes().strip()
    assert (current != old) is switched
    assert vault_contents(env, current) == contents
    assert not list(env.rglob(".*vault*")) and not (env / rekey.JOURNAL).exists()
    assert sorted(p.name for p in password_file.parent.iterdir()) == ["vault-pass"]


# -- secret-age and the read API -------------------------------------------------------------------

def test_secret_age_shows_ages_but_no_values(env, password_file):
    password = password_file.read_bytes().strip()
    path = env / "host_vars/globex/vault.yml"
    variables = vault.decrypt_file(path, password)
    variables[secrets_catalog.ROTATED_AT]["app_api_token"] = "2020-01-01T00:00:00Z"
    vault.encrypt_file(path, variables, password)
    proc = run("secret-age", "-i", str(env))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "SECRET", "AGE", "(DAYS)", "ROTATE", "EVERY", "STATUS"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    assert rows[("acme", "app_api_token")] == ["0", "90", "ok"]
    assert rows[("globex", "app_api_token")][1:] == ["90", "OVERDUE"]
    for values in vault_contents(env, password).values():
        for name, value in values.items():
            if name != secrets_catalog.ROTATED_AT:
                assert value not in proc.stdout + proc.stderr


def test_example_environment_api():
    inv = inventory.load(EXAMPLE)
    assert inv.name == "example"
    assert inv.hosts() == ["acme", "globex"]
    assert inv.groups()["tier2"] == ["globex"] and inv.groups()["canary"] == ["acme"]
    assert inv.exists("acme") and not inv.exists("initech") and not inv.exists("../..")
    assert inv.public_vars("acme")["app_version"] == "1.0.0"
    with pytest.raises(FleetdeckError, match="no instance 'initech' in environment example"):
        inv.public_vars("initech")
    password = EXAMPLE_PASSWORD.read_bytes().strip()
    for values in vault_contents(EXAMPLE, password).values():
        assert values["vault_app_api_token"].startswith("EXAMPLE-not-a-secret-")


# -- check-inventory ---------------------------------------------------------------------------------

def pin_fake_keys(env: Path) -> None:
    """Host keys for the env fixture's instances (their hosts are not up), as add-instance would pin them."""
    example_keys = [line.split()[1:] for line in (EXAMPLE / "known_hosts").read_text().splitlines()
                    if line and not line.startswith("#")]
    with (env / "known_hosts").open("a") as known_hosts:
        for address, key in zip(("192.0.2.10", "192.0.2.20"), example_keys, strict=True):
            known_hosts.write(f"{address} {' '.join(key)}\n")


def test_check_inventory_passes_a_good_environment(env, password_file):
    pin_fake_keys(env)
    proc = run("check-inventory", "-i", str(env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == (f"{env}: 2 instance(s) checked: names, settings, vaults, secrets, host keys: "
                           "no problems\n")


def test_check_inventory_names_every_problem_by_file_and_field(env, password_file):
    password = password_file.read_bytes().strip()
    secrets = vault_contents(env, password)
    # known_hosts: only globex is pinned, and one line is garbage.
    pin_fake_keys(env)
    known_hosts = env / "known_hosts"
    known_hosts.write_text(known_hosts.read_text().replace("192.0.2.10 ", "192.0.2.99 ") + "nonsense line\n")
    # acme: a damaged vault; globex: a secret missing, a bad address, a tier that contradicts hosts.yml.
    acme_vault = env / "host_vars/acme/vault.yml"
    lines = acme_vault.read_text().splitlines()
    acme_vault.write_text("\n".join([*lines[:3], lines[3].replace(lines[3][5], "0" if lines[3][5] != "0" else "1"),
                                      *lines[4:]]) + "\n")
    globex = secrets["globex"]
    del globex["vault_app_db_password"]
    vault.encrypt_file(env / "host_vars/globex/vault.yml", globex, password)
    main = env / "host_vars/globex/main.yml"
    main.write_text(main.read_text().replace('"192.0.2.20"', '"192.0.2.300"').replace("fleetdeck_tier: 2",
                                                                                       "fleetdeck_tier: 1"))
    (env / "host_vars/initech").mkdir()

    proc = run("check-inventory", "-i", str(env))
    assert proc.returncode == 1
    problems = proc.stdout.splitlines()
    assert proc.stderr == f"check-inventory: 7 problem(s) in {env}\n"
    assert problems[0] == "known_hosts: line 4: not a valid 'HOST KEYTYPE BASE64KEY' entry"
    assert problems[1].startswith("cannot decrypt host_vars/acme/vault.yml with this vault password")
    assert problems[2] == ("known_hosts: acme: no host key pinned for 192.0.2.10 (scripts/add-instance pins it; "
                           "or: ssh-keyscan -t ed25519 -p 22 192.0.2.10)")
    assert problems[3].startswith("host_vars/globex/main.yml: ansible_host: ADDRESS '192.0.2.300' is neither")
    assert problems[4] == ("hosts.yml: globex: fleetdeck_tier is 1, so it belongs to group tier1 only, "
                           "but it is in: tier2")
    assert problems[5] == ("host_vars/globex/vault.yml: vault_app_db_password: missing "
                           "(secret app_db_password of the catalog)")
    assert problems[6] == "host_vars/initech: no instance 'initech' in hosts.yml"
    for value in (v for values in secrets.values() for k, v in values.items() if k.startswith("vault_app_")):
        assert value not in proc.stdout + proc.stderr


def test_check_inventory_does_not_quote_a_malformed_vault(env, password_file):
    password = password_file.read_bytes().strip()
    pin_fake_keys(env)
    path = env / "host_vars/acme/vault.yml"
    path.write_bytes(vault.encrypt(b"vault_app_api_token: s3cr3t-VALUE: oops\n", password))
    proc = run("check-inventory", "-i", str(env))
    assert proc.returncode == 1
    assert proc.stdout == ("host_vars/acme/vault.yml: not valid YAML at line 1, column 34: mapping values are "
                           "not allowed here\n")
    assert "s3cr3t" not in proc.stdout + proc.stderr


# -- a bad vault fails its instance only (the collection's isolated_host_group_vars) ----------------

def test_an_undecryptable_vault_fails_only_its_instance_and_names_the_file(env, password_file, tmp_path):
    # Both instances run on the controller: no host is needed to see which one Ansible operates.
    (env / "group_vars/all/local.yml").write_text("ansible_connection: local\n")
    password = password_file.read_bytes().strip()
    (env / "host_vars/globex/vault.yml").write_bytes(vault.encrypt(b"vault_app_api_token: x\n", b"other password"))
    playbook = tmp_path / "uses-the-token.yml"
    playbook.write_text("- hosts: fleet\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.command: echo {{ app_api_token | length }}\n")

    def play(path: Path = playbook, *args: str) -> tuple[int, str]:
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(env), str(path), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
        return proc.returncode, proc.stdout + proc.stderr

    def recap(output: str, host: str) -> str:
        return re.search(rf"^{host}\s+: (ok=.*?failed=\d+)", output, re.M)[1].split()

    rc, output = play()
    assert rc == 2, output
    assert (f"[ERROR]: Task failed: Error processing keyword 'connection': {env}/host_vars/globex/vault.yml: "
            "cannot be decrypted with the vault password (Decryption failed") in output
    assert recap(output, "acme") == ["ok=1", "changed=1", "unreachable=0", "failed=0"]
    assert recap(output, "globex") == ["ok=0", "changed=0", "unreachable=0", "failed=1"]
    rc, output = play(REPO / "playbooks/smoke_check.yml", "-e", "app_health_url=")
    assert rc == 2, output
    assert re.search(r"acme +192.0.2.10 +n/a", output), output
    assert re.search(r"globex +192.0.2.20 +BAD VARS +- +\S*/host_vars/globex/vault.yml:\s+cannot be decrypted", output)

    # A vault that decrypts to malformed YAML is named without quoting its content.
    (env / "host_vars/acme/vault.yml").write_bytes(vault.encrypt(b"vault_app_api_token: s3cr3t-VALUE: oops\n",
                                                                 password))
    rc, output = play()
    assert rc == 2, output
    assert f"{env}/host_vars/acme/vault.yml: cannot be loaded (YAML parsing failed" in output
    assert recap(output, "acme") == ["ok=0", "changed=0", "unreachable=0", "failed=1"]
    assert "s3cr3t" not in output


# -- real hosts ------------------------------------------------------------------------------------

@pytest.mark.fleet
def test_add_instance_pins_the_real_host_key_and_ansible_connects(fleet, tmp_path, password_file):
    env = tmp_path / "inventory" / "prod"
    first, second = fleet.hosts
    proc = run("add-instance", "acme", "acme.example.com", first.address, "--canary", "-i", str(env))
    assert proc.returncode == 0, proc.stderr
    next_command = f"next: ansible-playbook -i {env} playbooks/deploy.yml --limit acme"
    assert proc.stdout.splitlines()[-1] == next_command
    proc = run("add-instance", "globex", "globex.example.com", second.address, "--tier", "2", "-i", str(env))
    assert proc.returncode == 0, proc.stderr

    pinned = [line.split() for line in (env / "known_hosts").read_text().splitlines()
              if not line.startswith("#")]
    for host, entry in zip(fleet.hosts, pinned, strict=True):
        real = fleet.ssh(host, "cat /etc/ssh/fleetdeck_host_ed25519_key.pub").stdout.split()
        assert entry == [host.address, *real[:2]]

    def ping(pattern: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible"), "-i", str(env), pattern, "-m", "ansible.builtin.ping"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, **fleet.ansible_env(), "ANSIBLE_REMOTE_USER": "root",
                 "ANSIBLE_FORCE_COLOR": "0", "FLEETDECK_VAULT_PASSWORD_FILE": str(password_file)})

    # With the wrong key pinned, Ansible refuses the host and add-instance refuses to pin another key.
    good = (env / "known_hosts").read_text()
    (env / "known_hosts").write_text(good.replace(pinned[0][2], pinned[1][2]))
    refused = ping("acme")
    assert refused.returncode != 0
    # OpenSSH's words (stock ssh connection), or Mitogen's for the same refusal.
    assert re.search("REMOTE HOST IDENTIFICATION HAS CHANGED|SSH reported an unrecognized or mismatching host key",
                     refused.stdout + refused.stderr)
    proc = run("add-instance", "initech", "initech.example.com", first.address, "-i", str(env))
    assert proc.returncode == 2
    assert f"already pins a different ssh-ed25519 key for {first.address}" in proc.stderr
    assert not inventory.load(env).exists("initech")

    (env / "known_hosts").write_text(good)
    ok = ping("fleet")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("| SUCCESS =>") == 2 and ok.stdout.count("ping: pong") == 2
