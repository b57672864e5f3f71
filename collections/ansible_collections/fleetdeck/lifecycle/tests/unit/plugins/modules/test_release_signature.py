"""The release_signature module with the real ssh-keygen: good, missing, tampered and foreign signatures."""

import subprocess
from typing import NamedTuple

import pytest
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module

NAMESPACE = "fleetdeck-release"


def keypair(directory, name):
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (directory / f"{name}.pub").read_text().strip()


def sign(key, path, namespace=NAMESPACE):
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, str(path)], check=True,
                   capture_output=True)


class Release(NamedTuple):
    checksum: object  # the signed checksum file (a Path)
    key: object  # the signing key (a Path)
    public: str


@pytest.fixture
def release(tmp_path):
    key, public = keypair(tmp_path, "release-2026")
    checksum = tmp_path / "app-1.0.0.tar.gz.sha256"
    checksum.write_text(f"{'a' * 64}  app-1.0.0.tar.gz\n")
    sign(key, checksum)
    return Release(checksum, key, public)


def test_a_good_signature_returns_the_verified_content_and_the_signer(release):
    checksum, public = release.checksum, release.public
    rc, result = run_module("release_signature", src=str(checksum), signers=[public])
    assert rc == 0, result
    assert result["content"] == checksum.read_text() and result["changed"] is False
    assert result["signer"].startswith("SHA256:")


def test_two_signers_are_accepted_during_a_key_change(release, tmp_path):
    checksum, public = release.checksum, release.public
    next_public = keypair(tmp_path, "release-2027")[1]
    for signers in ([next_public, public], [public, next_public]):
        rc, result = run_module("release_signature", src=str(checksum), signers=signers)
        assert rc == 0, result


def test_a_missing_signature_is_refused_naming_it(release):
    checksum, public = release.checksum, release.public
    checksum.with_name(checksum.name + ".sig").unlink()
    rc, result = run_module("release_signature", src=str(checksum), signers=[public])
    assert rc == 1
    assert result["msg"] == (f"{checksum}.sig: no such signature; release signers are set, so releases must be "
                             "signed; refusing to install it")


def test_a_tampered_file_is_refused(release):
    checksum, public = release.checksum, release.public
    checksum.write_text(f"{'b' * 64}  app-1.0.0.tar.gz\n")
    rc, result = run_module("release_signature", src=str(checksum), signers=[public])
    assert rc == 1
    assert result["msg"].startswith(f"{checksum}: the signature does not match the file (tampered")
    assert result["msg"].endswith("refusing to install it")


def test_a_signature_by_an_unknown_key_is_refused_with_its_fingerprint(release, tmp_path):
    checksum, public = release.checksum, release.public
    other = keypair(tmp_path, "intruder")[0]
    checksum.with_name(checksum.name + ".sig").unlink()
    sign(other, checksum)
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{other}.pub"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    rc, result = run_module("release_signature", src=str(checksum), signers=[public])
    assert rc == 1
    assert result["msg"] == (f"{checksum}: signed by key {fingerprint}, which is not one of the allowed release "
                             "signers; refusing to install it")


def test_a_signature_for_another_namespace_is_refused(release):
    checksum, key, public = release.checksum, release.key, release.public
    checksum.with_name(checksum.name + ".sig").unlink()
    sign(key, checksum, namespace="file")
    rc, result = run_module("release_signature", src=str(checksum), signers=[public])
    assert rc == 1 and "the signature does not match the file" in result["msg"]


def test_a_signer_that_is_not_an_ed25519_key_is_a_precise_error(release):
    checksum, public = release.checksum, release.public
    rc, result = run_module("release_signature", src=str(checksum), signers=[public, "ssh-rsa AAAAB3 old"])
    assert rc == 1
    assert result["msg"] == ("signers[1] is not an Ed25519 public key (ssh-ed25519 AAAA... [comment]): "
                             "'ssh-rsa AAAAB3 old'")


def test_a_release_served_over_http_is_verified(release, server):
    checksum, public = release.checksum, release.public
    signature = checksum.with_name(checksum.name + ".sig").read_text()
    server.routes = {"/r/app.sha256": lambda _: (200, checksum.read_text()),
                     "/r/app.sha256.sig": lambda _: (200, signature)}
    base = server.url.rsplit("/", 1)[0]
    rc, result = run_module("release_signature", src=f"{base}/r/app.sha256", signers=[public])
    assert rc == 0, result
    assert result["content"] == checksum.read_text()

    server.routes = {"/r/app.sha256": lambda _: (200, checksum.read_text()), "/r/app.sha256.sig": lambda _: (404, "")}
    rc, result = run_module("release_signature", src=f"{base}/r/app.sha256", signers=[public])
    assert rc == 1 and result["msg"].startswith(f"{base}/r/app.sha256.sig: no such signature")
