"""A scaffolded, vault-encrypted environment of instances on a test fleet, for playbook tests."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.fleet import Fleet
from tests.playbook import BIN, REPO, PlaybookResult, finished, start_playbook
from tests.refapp.build import build, make_signing_key


@dataclass
class Deployment:
    fleet: Fleet
    inventory: Path
    dist: Path
    env: dict[str, str]
    release_signer: str = ""  # public key of the test key that signed the releases in dist
    instances: dict[str, str] = field(default_factory=dict)  # instance -> address
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, fleet: Fleet, workdir: Path, canary: int = 0, tier2: tuple[int, ...] = (),
               instances: int | None = None) -> Deployment:
        """Build the releases, bootstrap a vault password and add one instance per fleet host (the first
        `instances` hosts if given)."""
        dist = workdir / "dist"
        signer = make_signing_key(workdir / "release-key")
        build(dist, None, sign_key=workdir / "release-key")
        env = {**fleet.ansible_env(), "FLEETDECK_VAULT_PASSWORD_FILE": str(workdir / "vault-pass"),
               "FLEETDECK_AUDIT_LOG": str(workdir / "audit.log"), "FLEETDECK_BACKUP_STORE": str(workdir / "store")}
        deployment = cls(fleet, workdir / "inventory" / "test", dist, env, signer)
        deployment.script("bootstrap-vault", "-i", str(deployment.inventory))
        for index, host in enumerate(fleet.hosts[:instances]):
            name = f"inst{index + 1}"
            args = ["--tier", "2" if index in tier2 else "1"] + (["--canary"] if index < canary else [])
            deployment.script("add-instance", name, f"{name}.example.test", host.address, *args,
                              "-i", str(deployment.inventory))
            deployment.instances[name] = host.address
        return deployment

    @classmethod
    def deployed(cls, fleet: Fleet, workdir: Path, *deploy_args: str, **options) -> Deployment:
        """create(), then deploy.yml on every instance (extra deploy.yml arguments, e.g. --skip-tags common)."""
        deployment = cls.create(fleet, workdir, **options)
        result = deployment.playbook("deploy.yml", *deploy_args)
        assert result.rc == 0, result.output
        return deployment

    def add_central(self, address: str, fleet: Fleet) -> None:
        """Put the fleet host at ADDRESS in the inventory as central1 (group central), its host key pinned."""
        (self.inventory / "central.yml").write_text(yaml.safe_dump(
            {"all": {"children": {"central": {"hosts": {"central1": {"ansible_host": address}}}}}}))
        host_key = next(line for line in fleet.known_hosts.read_text().splitlines() if line.startswith(f"{address} "))
        with open(self.inventory / "known_hosts", "a") as known_hosts:
            known_hosts.write(host_key + "\n")

    def script(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(REPO / "scripts" / name), *args], cwd=REPO, env={**os.environ, **self.env},
                              capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"scripts/{name} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def start(self, playbook: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """The playbook on this environment, started (finish it with playbook_finished)."""
        return start_playbook(playbook, self.inventory, "-e", f"app_artifact_controller_dir={self.dist}",
                              "-e", "app_artifact_base_url=", "-e", f"@{REPO / 'tests/fleet_overrides.yml'}",
                              *args, env={**self.env, **(env or {})})

    def playbook_finished(self, proc: subprocess.Popen) -> PlaybookResult:
        result = finished(proc)
        self.outputs.append(result.output)
        return result

    def playbook(self, playbook: str, *args: str, env: dict[str, str] | None = None) -> PlaybookResult:
        return self.playbook_finished(self.start(playbook, *args, env=env))

    def on(self, instance: str, command: str, check: bool = True) -> str:
        return self.fleet.ssh(self.instances[instance], command, check=check).stdout

    def health(self, instance: str) -> dict:
        return json.loads(self.on(instance, "curl -s http://127.0.0.1:8080/health"))

    def main_pid(self, instance: str) -> str:
        return self.on(instance, "systemctl show -p MainPID --value refapp").strip()

    def secrets(self, instance: str) -> dict:
        """The instance's decrypted vault.yml."""
        vault_file = self.inventory / "host_vars" / instance / "vault.yml"
        proc = subprocess.run([str(BIN / "ansible-vault"), "view", str(vault_file)], cwd=REPO,
                              env={**os.environ, **self.env}, capture_output=True, text=True, check=True)
        return yaml.safe_load(proc.stdout)

    def api(self, instance: str, method: str, path: str, body: str = "") -> dict:
        """Call the app's authenticated API on the instance, with its current token."""
        token = self.secrets(instance)["vault_app_api_token"]
        data = f"-d '{body}' " if body else ""
        return json.loads(self.on(instance, f"curl -sf -X {method} -H 'Authorization: Bearer {token}' "
                                            f"-H 'Content-Type: application/json' {data}http://127.0.0.1:8080{path}"))

    def vault_values(self) -> list[str]:
        """Every secret value in the environment's vault files (decrypted with ansible-vault)."""
        return [str(value) for vault_file in sorted(self.inventory.glob("host_vars/*/vault.yml"))
                for name, value in self.secrets(vault_file.parent.name).items() if name.startswith("vault_app_")]
