"""backup.yml and restore.yml on real hosts: archives, manifests, metrics, retention, restore after data
loss, restore onto a fresh host, a damaged backup refused, a full disk failing cleanly."""

import hashlib
import json
from pathlib import Path

import pytest

from tests.deployment import Deployment

FLEET_SIZE = 4  # inst4: a freshly deployed, empty instance for the disaster-recovery test
FIRST = ("inst1", "inst2", "inst3")
ID_OLD = ("20200101T000000Z", "20200102T000000Z")  # planted to be pruned by retention
TOKEN = "set -a; . /opt/refapp/shared/config/secrets.env; set +a; "


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("backup")
    deployment = Deployment.create(fleet, workdir)
    deployment.env["FLEETDECK_BACKUP_STORE"] = str(workdir / "store")
    # All four at once (deploying inst4 later costs minutes); the OS baseline (common) is test_deploy's.
    result = deployment.playbook("deploy.yml", "--skip-tags", "common")
    assert result.rc == 0, result.output
    for instance in FIRST:
        for name in ("alpha", "beta", f"only-{instance}"):
            post(deployment, instance, name)
    return deployment


@pytest.fixture(scope="module")
def store(deployment) -> Path:
    return Path(deployment.env["FLEETDECK_BACKUP_STORE"])


def post(deployment, instance, name):
    answer = deployment.on(instance, f"{TOKEN} curl -sf -H \"Authorization: Bearer $REFAPP_API_TOKEN\" "
                                     f"-d '{{\"name\": \"{name}\"}}' http://127.0.0.1:8080/items")
    assert json.loads(answer)["name"] == name


def content(deployment, instance) -> dict:
    """What a restore must bring back: the rows and a checksum of every file of the data directory."""
    rows = deployment.on(instance, "runuser -u postgres -- psql -d refapp -Atc "
                                   "'select id, name, created_at from items order by id'")
    files = deployment.on(instance, "cd /opt/refapp/shared/data && find . -type f | sort | xargs -r sha256sum")
    owners = deployment.on(instance, "cd /opt/refapp/shared && stat -c '%U %a %n' data data/items 2>&1; true")
    return {"rows": rows, "files": files, "owners": owners}


def backups_on(deployment, instance) -> list[str]:
    return deployment.on(instance, "ls /var/backups/refapp").split()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_backup_of_every_instance_with_manifest_metrics_and_retention(deployment, store):
    for instance in FIRST:  # older backups, on the host and in the store, for retention to prune
        deployment.on(instance, "mkdir -p " + " ".join(f"/var/backups/refapp/{i}" for i in ID_OLD))
        for backup_id in ID_OLD:
            (store / instance / backup_id).mkdir(parents=True)
    pids = {i: deployment.main_pid(i) for i in FIRST}
    result = deployment.playbook("backup.yml", "--limit", ",".join(FIRST), "-e", "backup_keep=2",
                                 "-e", "backup_store_keep=2")
    assert result.rc == 0, result.output
    assert all(result.changed()[i] > 0 for i in FIRST)  # a backup run always makes a new backup
    for instance in FIRST:
        kept = backups_on(deployment, instance)
        assert len(kept) == 2 and kept[0] == ID_OLD[1] and kept[1] > ID_OLD[1], kept  # oldest pruned
        new = kept[1]
        assert sorted(p.name for p in (store / instance).iterdir()) == [ID_OLD[1], new]
        stored = store / instance / new
        manifest = json.loads((stored / "manifest.json").read_text())
        assert manifest["id"] == new and manifest["instance"] == instance
        assert set(manifest["parts"]) == {"database.dump", "data.tar.gz"}
        for part, meta in manifest["parts"].items():
            assert sha256(stored / part) == meta["sha256"] and (stored / part).stat().st_size == meta["size"]
        host_sums = deployment.on(instance, f"cd /var/backups/refapp/{new} && sha256sum database.dump data.tar.gz")
        assert host_sums.split()[::2] == [manifest["parts"][p]["sha256"] for p in ("database.dump", "data.tar.gz")]
        assert (stored / "database.dump").read_bytes()[:5] == b"PGDMP"  # pg_dump custom format
        metrics = deployment.on(instance, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom")
        values = dict(line.split() for line in metrics.splitlines() if not line.startswith("#"))
        assert int(values["refapp_backup_size_bytes"]) == sum(m["size"] for m in manifest["parts"].values())
        assert abs(float(values["refapp_backup_last_success_timestamp_seconds"])
                   - (store / instance / new).stat().st_mtime) < 300
        assert deployment.on(instance, "ls -A /var/backups/refapp | grep -c partial || true").strip() == "0"
    assert {i: deployment.main_pid(i) for i in FIRST} == pids  # the app kept serving


def test_check_mode_changes_nothing(deployment, store):
    before = {i: backups_on(deployment, i) for i in FIRST}
    stored = sorted(str(p) for p in store.rglob("*"))
    result = deployment.playbook("backup.yml", "--limit", ",".join(FIRST), "--check")
    assert result.rc == 0, result.output
    assert result.changed() == dict.fromkeys(FIRST, 0)
    assert {i: backups_on(deployment, i) for i in FIRST} == before
    assert sorted(str(p) for p in store.rglob("*")) == stored


def test_restore_after_data_loss_brings_back_rows_and_files(deployment):
    before = content(deployment, "inst1")
    assert before["rows"].count("\n") >= 2 and "items/" in before["files"]
    deployment.on("inst1", "runuser -u postgres -- psql -d refapp -c 'delete from items'"
                           " && rm -rf /opt/refapp/shared/data/items")
    assert content(deployment, "inst1")["rows"] == ""
    result = deployment.playbook("restore.yml", "--limit", "inst1")
    assert result.rc == 0, result.output
    assert content(deployment, "inst1") == before
    health = deployment.health("inst1")
    assert health["status"] == "ok" and health["database"] == "reachable"
    post(deployment, "inst1", "after-restore")  # writable again, through the app's own role
    leftovers = deployment.on("inst1", "ls -A /opt/refapp/shared; runuser -u postgres -- psql -Atc "
                                       "\"select datname from pg_database where datname like 'refapp%'\"")
    assert leftovers.split() == ["config", "data", "refapp"]


def test_damaged_backup_is_refused_before_touching_anything(deployment, store):
    latest = sorted((store / "inst3").iterdir())[-1]
    archive = latest / "data.tar.gz"
    original = archive.read_bytes()
    archive.write_bytes(original + b"x")
    pid, before = deployment.main_pid("inst3"), content(deployment, "inst3")
    try:
        result = deployment.playbook("restore.yml", "--limit", "inst3")
    finally:
        archive.write_bytes(original)
    assert result.rc != 0
    assert f"backup {latest.name} of inst3" in result.output and "is not intact" in result.output
    assert "data.tar.gz has sha256 " + hashlib.sha256(original + b"x").hexdigest() in result.output
    assert "nothing live was touched" in result.output
    assert deployment.main_pid("inst3") == pid and content(deployment, "inst3") == before
    missing = deployment.playbook("restore.yml", "--limit", "inst3", "-e", "backup=20991231T000000Z")
    assert missing.rc != 0 and "no backup 20991231T000000Z of inst3" in missing.output

    # A manifest that vouches for another backup (of inst2) is refused, like a .sha256 of another file.
    other = sorted((store / "inst2").iterdir())[-1]
    manifest = latest / "manifest.json"
    own = manifest.read_bytes()
    manifest.write_bytes((other / "manifest.json").read_bytes())
    for part in ("database.dump", "data.tar.gz"):
        (latest / part).rename(latest / f"{part}.own")
        (latest / part).write_bytes((other / part).read_bytes())
    try:
        foreign = deployment.playbook("restore.yml", "--limit", "inst3")
    finally:
        manifest.write_bytes(own)
        for part in ("database.dump", "data.tar.gz"):
            (latest / f"{part}.own").replace(latest / part)
    assert foreign.rc != 0
    assert f"its manifest is for backup {other.name} of inst2" in foreign.output, foreign.output
    assert deployment.main_pid("inst3") == pid and content(deployment, "inst3") == before


def test_backup_restored_onto_a_fresh_host(deployment):
    source = content(deployment, "inst2")
    assert content(deployment, "inst4")["rows"] == ""  # scaffolded and deployed, never used
    result = deployment.playbook("restore.yml", "--limit", "inst4", "-e", "backup_restore_from=inst2")
    assert result.rc == 0, result.output
    assert content(deployment, "inst4") == source
    health = deployment.health("inst4")
    assert health["status"] == "ok" and health["database"] == "reachable" and health["instance"] == "inst4"
    post(deployment, "inst4", "on-the-new-host")  # inst4's own token and database password work


def test_full_disk_fails_clearly_and_keeps_earlier_backups(deployment):
    host = "inst2"
    earlier = backups_on(deployment, host)
    sums = deployment.on(host, "cd /var/backups/refapp && find . -type f | sort | xargs -r sha256sum")
    metrics = deployment.on(host, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom")
    # A tiny filesystem over the backup directory holding the earlier backups, then filled up.
    deployment.on(host, "cp -a /var/backups/refapp /tmp/earlier && mount -t tmpfs -o size=256k tmpfs "
                        "/var/backups/refapp && cp -a /tmp/earlier/. /var/backups/refapp/ && "
                        "(dd if=/dev/zero of=/var/backups/refapp/filler bs=4k 2>/dev/null || true)")
    try:
        result = deployment.playbook("backup.yml", "--limit", host)
        deployment.on(host, "rm /var/backups/refapp/filler")
        after = deployment.on(host, "cd /var/backups/refapp && find . -type f | sort | xargs -r sha256sum")
        listing = backups_on(deployment, host)
    finally:
        deployment.on(host, "umount /var/backups/refapp; rm -rf /tmp/earlier", check=False)
    assert result.rc != 0
    assert f"backup of {host} FAILED" in result.output and "No space left on device" in result.output
    assert "Nothing was recorded as a success" in result.output
    assert listing == earlier and after == sums
    assert deployment.on(host, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom") == metrics
    assert deployment.health(host)["status"] == "ok"
