"""The runner's packaging, without a cluster or a container engine:

- the Helm chart (runner/chart/fleetdeck-runner) linted and rendered by Helm's own Go engine (the Helm v4 SDK
  that the pinned helm-python-sdk wheel bundles: the code behind `helm lint` and `helm template`), every
  rendered manifest validated against the Kubernetes OpenAPI JSON schemas in strict mode (kubernetes-validate,
  which ships them), in SQLite and PostgreSQL modes, and the values the chart must refuse;
- the compose file (runner/compose.yaml) checked by Debian's docker-compose (`config`, its schema validation);
- the collections ansible.cfg loads: requirements.yml's, linked from the ansible package (scripts/link-collections).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from fleetdeck import collections
from fleetdeck.errors import FleetdeckError
from fleetdeck.service.config import from_env

from tests.playbook import REPO

CHART = REPO / "runner" / "chart" / "fleetdeck-runner"
COMPOSE = REPO / "runner" / "compose.yaml"
KUBERNETES = "1.32.0"
REQUIRED = {
    "secrets": {"runnerTokens": '[{"name": "hub", "sha256": "' + "ab" * 32 + '", "scopes": ["read"]}]',
                "vaultPassword": "not-a-real-vault-password"},
    "inventory": {"existingClaim": "fleetdeck-inventory"},
    "ssh": {"existingSecret": "fleetdeck-ssh"},
}
MODES = {
    "sqlite": {},
    "postgresql-external": {"store": "postgresql", "replicaCount": 3,
                            "postgresql": {"external": {"url": "postgresql://fd:pw@db.example:5432/fd"}},
                            "ingress": {"enabled": True, "className": "nginx", "tlsSecret": "runner-tls"},
                            "auditLog": {"existingClaim": "fleetdeck-audit"}},
    "postgresql-existing-secrets": {
        "store": "postgresql", "replicaCount": 2,
        "secrets": {"existingSecret": "runner-secrets", "runnerTokens": "", "vaultPassword": ""},
        "postgresql": {"external": {"existingSecret": "db", "existingSecretKey": "url"}},
        "inventory": {"existingClaim": "", "secret": {"name": "inv", "items": [
            {"key": "hosts.yml", "path": "hosts.yml"}, {"key": "acme-vault", "path": "host_vars/acme/vault.yml"}]}},
    },
    "postgresql-bundled": {"store": "postgresql", "replicaCount": 2, "postgresql": {"bundled": {"enabled": True}}},
}


def merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name="fd", namespace="ops", is_install=True)
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("mode", MODES)
def test_the_chart_lints_and_renders_valid_manifests(mode):
    values = merged(REQUIRED, MODES[mode])
    report = helm.lint(CHART, values, strict=True, namespace="ops", kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    docs = render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises ValidationError naming the field
    runner = next(d for d in by_kind(docs, "Deployment"))
    container = runner["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = by_kind(docs, "ConfigMap")[0]["data"]
    env = [e["name"] for e in container["env"]]
    assert "FLEETDECK_REPLICA_ID" in env
    # No secret travels as a setting: every secret the runner reads is a *_FILE under the mounted Secret.
    assert not [k for k in config if any(w in k for w in ("TOKENS", "PASSWORD", "SECRET", "URL"))
                and not k.endswith("_FILE") and k != "FLEETDECK_HUB_URL"]
    volumes = {v["name"]: v for v in runner["spec"]["template"]["spec"]["volumes"]}
    projected = [(s["secret"]["name"], s["secret"].get("items")) for s in volumes["secrets"]["projected"]["sources"]]
    if mode == "sqlite":
        assert runner["spec"]["replicas"] == 1 and runner["spec"]["strategy"]["type"] == "Recreate"
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == by_kind(docs, "PersistentVolumeClaim")[0][
            "metadata"]["name"]
        assert "FLEETDECK_DATABASE_URL_FILE" not in config
        assert config["FLEETDECK_AUDIT_LOG"] == "/var/lib/fleetdeck-runner/audit.log"
        return
    assert runner["spec"]["replicas"] == MODES[mode]["replicaCount"]
    assert runner["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not by_kind(docs, "PersistentVolumeClaim") and "emptyDir" in volumes["data"]
    assert config["FLEETDECK_DATABASE_URL_FILE"] == "/run/secrets/fleetdeck/database-url"
    # Each pod its own audit log (env entries are expanded in order: the replica id is set before).
    assert env.index("FLEETDECK_REPLICA_ID") < env.index("FLEETDECK_AUDIT_LOG")
    assert next(e["value"] for e in container["env"] if e["name"] == "FLEETDECK_AUDIT_LOG") == (
        "/var/log/fleetdeck/$(FLEETDECK_REPLICA_ID).log")
    audit_claim = MODES[mode].get("auditLog", {}).get("existingClaim")
    assert volumes["audit"] == ({"name": "audit", "persistentVolumeClaim": {"claimName": audit_claim}} if audit_claim
                                else {"name": "audit", "emptyDir": {}})
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in by_kind(docs, "Secret")}
    if mode == "postgresql-external":
        assert projected == [("fd-fleetdeck-runner", None)]
        assert secrets["fd-fleetdeck-runner"]["database-url"] == "postgresql://fd:pw@db.example:5432/fd"
        assert by_kind(docs, "Ingress")[0]["spec"]["rules"][0]["host"] == "runner.example.com"
    elif mode == "postgresql-existing-secrets":
        assert secrets == {}
        assert projected == [("runner-secrets", None), ("db", [{"key": "url", "path": "database-url"}])]
        assert volumes["inventory"]["secret"]["items"][1]["path"] == "host_vars/acme/vault.yml"
    else:
        (db,) = by_kind(docs, "StatefulSet")
        assert db["spec"]["replicas"] == 1
        password = secrets["fd-fleetdeck-runner-postgresql"]["password"]
        assert len(password) == 32
        url = f"postgresql://fleetdeck:{password}@fd-fleetdeck-runner-postgresql:5432/fleetdeck"
        assert secrets["fd-fleetdeck-runner-postgresql"]["database-url"] == url
        assert ("fd-fleetdeck-runner-postgresql", [{"key": "database-url", "path": "database-url"}]) in projected
        services = {s["metadata"]["name"]: s["spec"]["selector"] for s in by_kind(docs, "Service")}
        assert services["fd-fleetdeck-runner"]["app.kubernetes.io/component"] == "runner"
        assert services["fd-fleetdeck-runner-postgresql"]["app.kubernetes.io/component"] == "postgresql"


@pytest.mark.parametrize("mode", [m for m in MODES if m != "postgresql-existing-secrets"])
def test_the_runner_accepts_the_charts_settings_and_has_every_file_they_name(mode, tmp_path):
    """The ConfigMap as the pod's environment, the projected Secret keys as the files it mounts: the runner's
    own settings parser takes them, every *_FILE names a mounted file, and each value arrives."""
    config = {"maxConcurrentRuns": 3, "cancelGrace": 7, "idleTimeout": 99, "keepArtifacts": 5, "maxStreamsPerToken": 2}
    docs = render(merged(REQUIRED, MODES[mode], {"config": config}))
    secrets = {d["metadata"]["name"]: d["stringData"] for d in by_kind(docs, "Secret")}
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    mount = next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == "secrets")
    (tmp_path / "secrets").mkdir()
    for volume in pod["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            data = secrets[source["secret"]["name"]]
            for item in source["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                (tmp_path / "secrets" / item["path"]).write_text(data[item["key"]])
    env = {k: v.replace(mount, str(tmp_path / "secrets")) for k, v in by_kind(docs, "ConfigMap")[0]["data"].items()}
    for name, path in env.items():
        if name.endswith("_FILE"):
            assert os.path.isfile(path), f"{name}: {path} is not among the mounted secret files"
    settings = from_env(env)
    assert [t.name for t in settings.tokens] == ["hub"]
    assert (settings.max_concurrent_runs, settings.cancel_grace, settings.idle_timeout, settings.keep_artifacts,
            settings.max_streams_per_token) == (3, 7, 99, 5, 2)
    assert str(settings.inventory) == "/srv/fleetdeck/inventory/production"


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 2},
     "replicaCount: 2 replicas need store: postgresql; with store: sqlite the runner must run as 1 replica"),
    ({"store": "postgresql"}, "store: postgresql needs postgresql.external.url"),
    ({"store": "postgresql", "postgresql": {"external": {"url": "postgresql://x"}, "bundled": {"enabled": True}}},
     "set either external (url or existingSecret) or bundled.enabled, not both"),
    ({"store": "mysql"}, 'store: must be sqlite or postgresql, not "mysql"'),
    ({"secrets": {"vaultPassword": ""}}, "secrets.vaultPassword: required"),
    ({"inventory": {"existingClaim": ""}}, "inventory: required"),
    ({"ssh": {"existingSecret": ""}}, "ssh.existingSecret: required"),
])
def test_the_chart_refuses_values_that_cannot_work(values, message):
    with pytest.raises(helm.HelmRenderError, match="execution error") as refused:
        render(merged(REQUIRED, values))
    assert message in str(refused.value)


def test_the_compose_file_is_valid_and_keeps_secrets_in_files(tmp_path):
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose not found: scripts/setup installs Debian's docker-compose"
    env = {**os.environ, "FLEETDECK_INVENTORY_DIR": str(tmp_path), "FLEETDECK_SSH_DIR": str(tmp_path)}
    result = subprocess.run([compose, "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    runner, postgres = config["services"]["runner"], config["services"]["postgres"]
    assert runner["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert all(p in runner["healthcheck"]["test"][-1] for p in ("/healthz", "/readyz"))
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    for service in (runner, postgres):
        for key, value in service["environment"].items():
            if any(w in key for w in ("TOKENS", "PASSWORD", "SECRET", "DATABASE_URL")):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), key
                assert value.removeprefix("/run/secrets/") in [s["source"] for s in service["secrets"]], key
    # A missing inventory is named, not mounted as an empty directory.
    del env["FLEETDECK_INVENTORY_DIR"]
    result = subprocess.run([compose, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "set FLEETDECK_INVENTORY_DIR" in result.stderr
    # One PostgreSQL image for compose and the chart's bundled server.
    bundled = yaml.safe_load((CHART / "values.yaml").read_text())["postgresql"]["bundled"]["image"]
    assert postgres["image"] == f"{bundled['repository']}:{bundled['tag']}"


def fake_collection(root, name, version, dependencies=None):
    path = root.joinpath(*name.split("."))
    path.mkdir(parents=True)
    (path / "MANIFEST.json").write_text(json.dumps({"collection_info": {
        "namespace": name.split(".")[0], "name": name.split(".")[1], "version": version,
        "dependencies": dependencies or {}}}))
    return path


def test_link_collections_links_the_pinned_ones_and_their_dependencies_only(tmp_path):
    source, target = tmp_path / "ansible_collections", tmp_path / "venv" / "collections"
    requirements = tmp_path / "r.yml"
    fake_collection(source, "a.one", "1.0.0", {"c.dep": ">=1"})
    fake_collection(source, "b.two", "2.0.0")
    fake_collection(source, "c.dep", "1.1.0")
    fake_collection(source, "d.unused", "9.9.9")
    requirements.write_text("collections:\n  - {name: a.one, version: 1.0.0}\n")
    stale = target / "ansible_collections" / "b" / "two"
    stale.parent.mkdir(parents=True)
    stale.symlink_to(source / "b" / "two")
    assert collections.link(requirements, source, target) == ["a.one 1.0.0", "c.dep 1.1.0"]
    linked = sorted(str(p.relative_to(target)) for p in target.glob("ansible_collections/*/*"))
    assert linked == ["ansible_collections/a/one", "ansible_collections/c/dep"]
    assert (target / "ansible_collections" / "a" / "one").resolve() == source / "a" / "one"

    requirements.write_text("collections:\n  - {name: a.one, version: 1.2.0}\n")
    with pytest.raises(FleetdeckError, match=r"r\.yml: a\.one is pinned to 1\.2\.0, but the installed ansible "
                                             r"package has 1\.0\.0"):
        collections.link(requirements, source, target)
    requirements.write_text("collections:\n  - {name: e.missing, version: 1.0.0}\n")
    with pytest.raises(FleetdeckError, match=r"e/missing: not an installed collection"):
        collections.link(requirements, source, target)


def test_ansible_loads_our_collection_and_those_requirements_yml_names_only():
    listed = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-galaxy"), "collection", "list", "--format", "json"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    found = {name: info["version"] for path, names in json.loads(listed.stdout).items() for name, info in names.items()
             if "site-packages" not in Path(path).parts}  # not ansible-core's internal ansible._protomatter
    requirements = yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]
    # community.docker depends on community.library_inventory_filtering_v1.
    assert set(found) == {c["name"] for c in requirements} | {"community.library_inventory_filtering_v1",
                                                              "fleetdeck.lifecycle"}
    assert all(found[c["name"]] == str(c["version"]) for c in requirements), found
