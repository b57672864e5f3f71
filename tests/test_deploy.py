"""Inventory -> deploy -> configure on 2 real hosts: healthy, idempotent, honest in check mode, no leaks."""

import hashlib
import json
import re
import secrets
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from fleetdeck import vault

from tests.deployment import Deployment
from tests.refapp.build import artifact_name, make_signing_key, sign

FLEET_SIZE = 2


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    return Deployment.deployed(fleet, tmp_path_factory.mktemp("deploy"))


def test_deploy_brings_every_instance_up_healthy(deployment):
    for instance in deployment.instances:
        health = deployment.health(instance)
        assert health["status"] == "ok" and health["version"] == "1.0.0", health
        assert health["database"] == "reachable" and health["instance"] == instance
        assert deployment.on(instance, "readlink /opt/refapp/current").strip() == "/opt/refapp/releases/1.0.0"
        assert '"current": "1.0.0"' in deployment.on(instance, "cat /etc/ansible/facts.d/app.fact")


def test_second_deploy_changes_nothing(deployment):
    result = deployment.playbook("deploy.yml")
    assert result.rc == 0, result.output
    assert result.changed() == dict.fromkeys(deployment.instances, 0)


def test_install_dependencies_on_a_deployed_fleet_changes_nothing(deployment):
    result = deployment.playbook("install_dependencies.yml")
    assert result.rc == 0, result.output
    assert result.changed() == dict.fromkeys(deployment.instances, 0)
    assert "Install the app's system packages" in result.output


def test_check_mode_changes_nothing(deployment):
    pids = {i: deployment.main_pid(i) for i in deployment.instances}
    before = {i: deployment.on(i, "md5sum /opt/refapp/shared/config/*.env") for i in deployment.instances}
    result = deployment.playbook("deploy.yml", "--check", "--diff")
    assert result.rc == 0, result.output
    assert result.changed() == dict.fromkeys(deployment.instances, 0)
    assert {i: deployment.main_pid(i) for i in deployment.instances} == pids
    assert {i: deployment.on(i, "md5sum /opt/refapp/shared/config/*.env") for i in deployment.instances} == before


def test_configure_previews_then_restarts_only_the_changed_instance(deployment):
    host_vars = deployment.inventory / "host_vars" / "inst1" / "main.yml"
    host_vars.write_text(host_vars.read_text().replace("app_features: []", "app_features: [beta]"))
    pids = {i: deployment.main_pid(i) for i in deployment.instances}

    preview = deployment.playbook("configure.yml", "--check", "--diff")
    assert preview.rc == 0, preview.output
    assert '+REFAPP_FEATURES="beta"' in preview.output
    assert preview.changed()["inst1"] > 0 and preview.changed()["inst2"] == 0
    assert {i: deployment.main_pid(i) for i in deployment.instances} == pids
    assert deployment.health("inst1")["features"] == []

    result = deployment.playbook("configure.yml")
    assert result.rc == 0, result.output
    assert deployment.health("inst1")["features"] == ["beta"]
    after = {i: deployment.main_pid(i) for i in deployment.instances}
    assert after["inst1"] != pids["inst1"]
    assert after["inst2"] == pids["inst2"]
    assert deployment.playbook("configure.yml").changed() == dict.fromkeys(deployment.instances, 0)


def test_configure_preview_of_a_changed_secret_shows_neither_value(deployment):
    instance = next(iter(deployment.instances))
    vault_file = deployment.inventory / "host_vars" / instance / "vault.yml"
    password = vault.read_password(Path(deployment.env["FLEETDECK_VAULT_PASSWORD_FILE"]))
    original = vault_file.read_bytes()
    values = vault.decrypt_file(vault_file, password)
    old, new = values["vault_app_api_token"], secrets.token_urlsafe(36)
    vault.encrypt_file(vault_file, {**values, "vault_app_api_token": new}, password)
    try:
        preview = deployment.playbook("configure.yml", "--check", "--diff")
    finally:
        vault_file.write_bytes(original)
    assert preview.rc == 0, preview.output
    assert preview.changed()[instance] > 0, "the secrets file would change: check mode must say so"
    assert old not in preview.output and new not in preview.output


def test_vault_files_are_encrypted_and_private(deployment):
    for vault_file in deployment.inventory.glob("host_vars/*/vault.yml"):
        assert vault_file.read_text().startswith("$ANSIBLE_VAULT;1.2;AES256;fleetdeck")
        assert stat.S_IMODE(vault_file.stat().st_mode) == 0o600


def test_smoke_reports_a_healthy_table(deployment):
    result = deployment.playbook("smoke_check.yml")
    assert result.rc == 0, result.output
    for instance, address in deployment.instances.items():
        assert f"{instance:<16} {address:<15} healthy     1.0.0" in result.output
    assert f"{FLEET_SIZE} instances, {FLEET_SIZE} answered" in result.output


def test_wrong_vault_password_fails_clearly_and_touches_nothing(deployment, tmp_path):
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not-the-password\n")
    pids = {i: deployment.main_pid(i) for i in deployment.instances}
    result = deployment.playbook("deploy.yml", env={"FLEETDECK_VAULT_PASSWORD_FILE": str(wrong)})
    assert result.rc != 0
    assert "Decryption failed" in result.output
    assert {i: deployment.main_pid(i) for i in deployment.instances} == pids


def test_artifact_with_wrong_checksum_is_refused(deployment, tmp_path):
    bad = tmp_path / "dist"
    shutil.copytree(deployment.dist, bad)
    (bad / "refapp-1.1.0-linux-amd64.tar.gz.sha256").write_text(f"{'0' * 64}  refapp-1.1.0-linux-amd64.tar.gz\n")
    result = deployment.playbook("deploy.yml", "--tags", "app", "--limit", "inst2", "-e", "app_version=1.1.0",
                                 "-e", f"app_artifact_controller_dir={bad}")
    assert result.rc != 0
    assert "but its .sha256 file says " + "0" * 64 in result.output
    assert "refusing to install it" in result.output
    assert deployment.health("inst2")["version"] == "1.0.0"
    assert deployment.on("inst2", "ls /opt/refapp/releases").split() == ["1.0.0"]


def test_failing_migration_stops_with_its_output_and_secrets_masked(deployment):
    before = deployment.main_pid("inst2")
    # A "migration" that fails and prints the database password, as a connection error might.
    migrate = "../../../../bin/sh -c 'printenv REFAPP_DB_PASSWORD; exit 3'"
    result = deployment.playbook("deploy.yml", "--tags", "app", "--limit", "inst2", "-e",
                                 f"app_migrate_command={migrate!r}")
    assert result.rc != 0
    assert "inst2: migrations of 1.0.0 failed (rc 3): ********" in result.output
    assert deployment.secrets("inst2")["vault_app_db_password"] not in result.output
    assert deployment.main_pid("inst2") == before and deployment.health("inst2")["status"] == "ok"


def test_unreachable_instance_is_named_and_others_are_untouched(deployment, tmp_path):
    inventory = tmp_path / "with-ghost"
    shutil.copytree(deployment.inventory, inventory)
    ghost = deployment.fleet.address(99)  # on the fleet's subnet, but nobody answers there
    proc = deployment.script("add-instance", "ghost", "ghost.example.test", ghost, "--no-host-key",
                             "-i", str(inventory))
    assert proc.returncode == 0
    pids = {i: deployment.main_pid(i) for i in deployment.instances}
    original, deployment.inventory = deployment.inventory, inventory
    try:
        result = deployment.playbook("deploy.yml", "--tags", "app")
    finally:
        deployment.inventory = original
    assert result.rc != 0
    assert result.recap["ghost"]["unreachable"] == 1
    assert "ghost                      : ok=0" in result.output or "UNREACHABLE! => " in result.output
    assert all(result.recap[i]["failed"] == 0 for i in deployment.instances)
    assert {i: deployment.main_pid(i) for i in deployment.instances} == pids


def host_state(deployment) -> dict[str, tuple[str, str]]:
    """What a run would change on each instance: its release layout (with times) and the app's process."""
    return {i: (deployment.on(i, "ls -la --time-style=full-iso /opt/refapp /opt/refapp/releases "
                                 "/etc/ansible/facts.d /var/lib/fleetdeck 2>&1"), deployment.main_pid(i))
            for i in deployment.instances}


def test_a_checksum_file_for_another_artifact_is_refused_before_any_instance_changes(deployment, tmp_path):
    bad = tmp_path / "dist"
    shutil.copytree(deployment.dist, bad)
    artifact = "refapp-1.1.0-linux-amd64.tar.gz"
    # The right sum, but the line names another file: `sha256sum -c` would not check this artifact with it.
    right_sum = (bad / f"{artifact}.sha256").read_text().split()[0]
    (bad / f"{artifact}.sha256").write_text(f"{right_sum}  refapp-1.0.0-linux-amd64.tar.gz\n")
    before = host_state(deployment)
    for playbook, extra in (("upgrade.yml", ["-e", "upgrade_batches=2"]), ("deploy.yml", [])):
        result = deployment.playbook(playbook, "-e", "app_version=1.1.0", "-e", f"app_artifact_controller_dir={bad}",
                                     *extra)
        assert result.rc != 0
        assert (f"{bad}/{artifact}.sha256 is for refapp-1.0.0-linux-amd64.tar.gz, not for {artifact}; "
                "refusing to use it") in result.output, result.output
        assert result.changed() == dict.fromkeys(deployment.instances, 0), result.output
        assert all(result.recap[i]["failed"] == 1 for i in deployment.instances)
    assert host_state(deployment) == before


def test_a_corrupt_vault_is_named_and_the_other_instances_deploy(deployment, tmp_path):
    inventory = tmp_path / "one-corrupt-vault"
    shutil.copytree(deployment.inventory, inventory)
    corrupt = inventory / "host_vars" / "inst2" / "vault.yml"
    lines = corrupt.read_text().splitlines()
    lines[3] = ("1" if lines[3][0] == "0" else "0") + lines[3][1:]  # one flipped digit of the ciphertext
    corrupt.write_text("\n".join(lines) + "\n")
    main = inventory / "host_vars" / "inst1" / "main.yml"
    main.write_text(re.sub(r"app_features: \[(.*)\]", r"app_features: [\1, isolated]", main.read_text())
                    .replace("[, isolated]", "[isolated]"))
    features = deployment.health("inst1")["features"]
    inst2_pid = deployment.main_pid("inst2")

    original, deployment.inventory = deployment.inventory, inventory
    try:
        result = deployment.playbook("deploy.yml")
    finally:
        deployment.inventory = original
    assert result.rc != 0
    assert f"{corrupt}: cannot be decrypted with the vault password" in result.output, result.output
    assert result.recap["inst2"] == {**result.recap["inst2"], "ok": 0, "changed": 0, "failed": 1}
    assert result.recap["inst1"]["failed"] == 0 and result.recap["inst1"]["unreachable"] == 0
    assert result.recap["inst1"]["changed"] > 0
    assert deployment.health("inst1")["features"] == [*features, "isolated"]
    assert deployment.main_pid("inst2") == inst2_pid and deployment.health("inst2")["status"] == "ok"


def test_no_secret_appears_in_any_output_or_log(deployment):
    secrets = deployment.vault_values()
    assert len(secrets) == 2 * len(deployment.instances)
    logs = [deployment.on(i, "journalctl --no-pager -o cat") for i in deployment.instances]
    for text in deployment.outputs + logs:
        for secret in secrets:
            assert secret not in text


def signed_release_dist(deployment, tmp_path, change) -> tuple[Path, Path]:
    """A copy of the signed releases with CHANGE(dist, checksum file of 1.1.0) applied; (dist, checksum file)."""
    dist = tmp_path / "dist"
    shutil.copytree(deployment.dist, dist)
    checksum = dist / "refapp-1.1.0-linux-amd64.tar.gz.sha256"
    change(dist, checksum)
    return dist, checksum


def tamper(dist, checksum):
    # Whoever can replace the artifact can replace the .sha256 beside it: only the signature tells.
    tarball = dist / "refapp-1.1.0-linux-amd64.tar.gz"
    tarball.write_bytes(tarball.read_bytes() + b"\0" * 512)
    checksum.write_text(f"{hashlib.sha256(tarball.read_bytes()).hexdigest()}  {tarball.name}\n")


def unsign(_, checksum):
    Path(f"{checksum}.sig").unlink()


def sign_with_an_unknown_key(dist, checksum):
    make_signing_key(dist.parent / "intruder-key")
    sign(checksum, dist.parent / "intruder-key")


@pytest.mark.parametrize(("change", "refusal"), [
    (tamper, "{checksum}: the signature does not match the file (tampered, corrupt or not for fleetdeck-release)"),
    (unsign, "{checksum}.sig: no such signature; release signers are set, so releases must be signed"),
    (sign_with_an_unknown_key, "{checksum}: signed by key SHA256:"),
])
def test_a_release_not_signed_by_a_release_signer_is_refused_before_any_instance_changes(
        deployment, tmp_path, change, refusal):
    dist, checksum = signed_release_dist(deployment, tmp_path, change)
    before = host_state(deployment)
    result = deployment.playbook("deploy.yml", "-e", "app_version=1.1.0", "-e", f"app_artifact_controller_dir={dist}",
                                 "-e", json.dumps({"app_release_signers": [deployment.release_signer]}))
    assert result.rc != 0
    assert refusal.format(checksum=checksum) in result.output, result.output
    assert "refusing to install it" in result.output
    assert result.changed() == dict.fromkeys(deployment.instances, 0), result.output
    assert all(result.recap[i]["failed"] == 1 for i in deployment.instances)
    assert host_state(deployment) == before


def test_a_signed_release_deploys_while_two_signers_are_accepted(deployment, tmp_path):
    next_signer = make_signing_key(tmp_path / "next-release-key")  # a key change in progress: old and new listed
    result = deployment.playbook("deploy.yml", "--limit", "inst2", "-e", "app_version=1.1.0", "-e",
                                 json.dumps({"app_release_signers": [next_signer, deployment.release_signer]}))
    assert result.rc == 0, result.output
    verified = (r"Verify the checksum file's signature by one of app_release_signers, on the controller\] \**\n"
                r"ok: \[inst2 -> localhost\]")
    assert re.search(verified, result.output), result.output
    assert deployment.health("inst2")["version"] == "1.1.0"


def git(repo: Path, *args: str) -> str:
    signing = ["-c", "user.name=Release", "-c", "user.email=release@example.test", "-c", "gpg.format=ssh"]
    return subprocess.run(["git", "-C", str(repo), *signing, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def release_repo(deployment, tmp_path_factory):
    """A bare repository whose commits hold refapp 1.4.0's release tree (what its tarball unpacks to: the refapp
    sources need a build step, so the built tree is committed); v1.4.0 is signed by the release key, the
    lightweight v1.4.0-unsigned is not; (bare repository, work tree)."""
    root = tmp_path_factory.mktemp("git-release")
    work = root / "work"
    with tarfile.open(deployment.dist / artifact_name("1.4.0")) as tar:
        tar.extractall(root, filter="tar")
    (root / "refapp-1.4.0").rename(work)
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "refapp 1.4.0")
    git(work, "-c", f"user.signingkey={deployment.dist.parent / 'release-key'}", "tag", "-s", "-m", "1.4.0", "v1.4.0")
    git(work, "tag", "v1.4.0-unsigned")
    bare = root / "refapp.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(bare)], check=True)
    return bare, work


def git_release_args(deployment, tmp_path, repo, ref, *extra: str) -> list[str]:
    (tmp_path / "git-dist").mkdir(exist_ok=True)
    return ["-e", "app_release_source=git", "-e", f"app_release_git_repo={repo}", "-e", f"app_release_git_ref={ref}",
            "-e", f"app_artifact_controller_dir={tmp_path / 'git-dist'}", "-e", "app_version=1.4.0",
            "-e", json.dumps({"app_release_signers": [deployment.release_signer]}), *extra]


def test_a_signed_git_tag_deploys_and_its_commit_is_pinned(deployment, release_repo, tmp_path):
    repo, work = release_repo
    commit = git(work, "rev-parse", "v1.4.0^{commit}")
    inst2 = host_state(deployment)["inst2"]
    result = deployment.playbook("deploy.yml", "--limit", "inst1",
                                 *git_release_args(deployment, tmp_path, repo, "v1.4.0"))
    assert result.rc == 0, result.output
    assert f"inst1: {repo} v1.4.0 is commit {commit}" in " ".join(result.output.split()), result.output
    assert deployment.health("inst1")["version"] == "1.4.0"
    assert (tmp_path / "git-dist" / f"{artifact_name('1.4.0')}.sha256").exists()
    host_vars = (deployment.inventory / "host_vars" / "inst1" / "main.yml").read_text()
    assert f'app_release_git_pins: {{"v1.4.0": "{commit}"}}' in host_vars, host_vars
    assert host_state(deployment)["inst2"] == inst2

    again = deployment.playbook("deploy.yml", "--limit", "inst1", "--tags", "app",
                                *git_release_args(deployment, tmp_path, repo, "v1.4.0"))
    assert again.rc == 0, again.output
    assert again.changed() == {"inst1": 0}, again.output


@pytest.mark.parametrize(("ref", "refusal"), [
    ("main", "app_release_git_ref main: is a branch of {repo}, which moves; name a tag or a full 40-hex commit id"),
    ("v9.9.9", "app_release_git_ref v9.9.9: no such tag in {repo}"),
    ("v1.4.0-unsigned", "tag v1.4.0-unsigned of {repo} is not signed by one of app_release_signers"),
])
def test_a_git_ref_that_is_not_a_signed_tag_is_refused_before_any_instance_changes(
        deployment, release_repo, tmp_path, ref, refusal):
    repo, _ = release_repo
    before = host_state(deployment)
    result = deployment.playbook("deploy.yml", "--limit", "inst2", *git_release_args(deployment, tmp_path, repo, ref))
    assert result.rc != 0
    assert refusal.format(repo=repo) in " ".join(result.output.split()), result.output
    assert "refusing to install it" in result.output
    assert result.recap["inst2"]["failed"] == 1 and result.changed() == {"inst2": 0}, result.output
    assert host_state(deployment) == before


def test_a_git_tag_that_moved_since_it_was_pinned_is_refused(deployment, release_repo, tmp_path):
    repo, work = release_repo
    pinned = git(work, "rev-parse", "v1.4.0^{commit}")
    (work / "NOTES").write_text("changed after the release was pinned\n")
    git(work, "add", "NOTES")
    git(work, "commit", "--quiet", "-m", "not 1.4.0 any more")
    git(work, "-c", f"user.signingkey={deployment.dist.parent / 'release-key'}", "tag", "-f", "-s", "-m", "1.4.0",
        "v1.4.0")
    git(work, "push", "--quiet", "--force", str(repo), "refs/tags/v1.4.0")
    moved = git(work, "rev-parse", "v1.4.0^{commit}")
    before = host_state(deployment)
    result = deployment.playbook("deploy.yml", "--limit", "inst1",
                                 *git_release_args(deployment, tmp_path, repo, "v1.4.0"))
    assert result.rc != 0
    assert (f"inst1: tag v1.4.0 of {repo} moved: it was pinned to commit {pinned} (app_release_git_pins) and now "
            f"points to {moved}; refusing to install it") in " ".join(result.output.split()), result.output
    assert result.changed() == {"inst1": 0}, result.output
    assert host_state(deployment) == before
