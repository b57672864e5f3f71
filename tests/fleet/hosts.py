"""A fleet of real test hosts on this machine.

Each host is a network namespace on a private bridge, with its own PID, mount, UTS and cgroup
namespaces, an overlay of the machine's root as its filesystem and systemd as PID 1; sshd accepts
the fleet's key only. Everything the harness creates is named after the fleet so that `down` can
find it again after a crash: netns `fleetdeck-<fleet>-<i>`, veth `fdv-<fleet>-<i>`, bridge
`fdbr-<fleet>`, cgroups `fleetdeck/<fleet>-<i>`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import limits

INIT = Path(__file__).with_name("host-init.sh")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,4}$")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
# Units the machine has enabled that a fresh test host must not start (a role starts what it needs).
KEEP_WANTS = {"ssh.service", "remote-fs.target"}
MASKED = ("getty.target", "console-getty.service", "serial-getty@.service", "getty@.service",
          "systemd-logind.service")
SSHD_CONFIG = """\
HostKey /etc/ssh/fleetdeck_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt the hosts' orphaned processes so they can be reaped: PID 1 here never reaps."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class FleetError(RuntimeError):
    pass


@dataclass
class Host:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    launcher_pid: int = 0


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FleetError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def _keypair() -> tuple[bytes, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


class Fleet:
    """Start, inspect and remove the test hosts of one named fleet."""

    def __init__(self, name: str = "fd", state_dir: str | Path | None = None, subnet: int | None = None):
        if not NAME_RE.match(name):
            raise FleetError(f"fleet name {name!r}: 1-5 lowercase letters/digits, starting with a letter")
        self.name = name
        self.dir = Path(state_dir or f"/tmp/fleetdeck-fleet-{name}").resolve()
        # Distinct fleets get distinct /24s: 10.231.<subnet>.0/24, the first free one from a hash of the name.
        self._subnet_fixed = subnet is not None
        self.subnet = subnet if subnet is not None else zlib.crc32(name.encode()) % 250 + 1
        self.bridge = f"fdbr-{name}"
        self.hosts: list[Host] = []
        self._launchers: dict[str, subprocess.Popen] = {}

    # -- addresses and files -------------------------------------------------------------------

    def address(self, index: int) -> str:
        return f"10.231.{self.subnet}.{10 + index}"

    @property
    def gateway(self) -> str:
        return f"10.231.{self.subnet}.1"

    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yml"

    @property
    def vault_password_file(self) -> Path:
        """A vault password of the fleet's own, so ansible.cfg's vault identity resolves in tests."""
        return self.dir / "vault-pass"

    @property
    def control_path_dir(self) -> Path:
        return self.dir / "cp"

    def ssh_args(self) -> list[str]:
        # One multiplexed connection per host, like Ansible's: UFW's rate limit on SSH (common role)
        # refuses a burst of fresh connections.
        return ["-i", str(self.key_file), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path_dir}/t-%C",
                "-o", "ControlPersist=60"]

    def ssh(self, host: Host | str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on a host over real SSH."""
        address = host.address if isinstance(host, Host) else host
        return _run("ssh", *self.ssh_args(), f"root@{address}", command, check=check)

    def ansible_env(self) -> dict[str, str]:
        """Environment for ansible commands run against this fleet (own ControlPersist sockets)."""
        return {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_path_dir),
                "ANSIBLE_PRIVATE_KEY_FILE": str(self.key_file),
                "ANSIBLE_REMOTE_USER": "root",
                "FLEETDECK_VAULT_PASSWORD_FILE": str(self.vault_password_file)}

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, count: int, timeout: float = 30.0) -> list[Host]:
        if not 1 <= count <= 200:
            raise FleetError("a fleet has 1 to 200 hosts")
        if os.geteuid() != 0:
            raise FleetError("the test fleet needs root (namespaces, bridge, mounts)")
        self.down()  # anything left by an earlier, crashed run
        try:
            limits.ensure(count)
        except limits.LimitError as exc:
            raise FleetError(str(exc)) from None
        self._claim_subnet()
        become_subreaper()
        self.dir.mkdir(parents=True)
        private, public = _keypair()
        _write(self.key_file, private, 0o600)
        _write(self.key_file.with_suffix(".pub"), public)
        self.control_path_dir.mkdir(mode=0o700)
        _write(self.vault_password_file, os.urandom(24).hex(), 0o600)
        _run("ip", "-batch", "-", stdin=f"link add {self.bridge} type bridge\n"
             f"addr add {self.gateway}/24 dev {self.bridge}\nlink set {self.bridge} up\n")
        whiteouts = self._unwanted_units()
        known_hosts = []
        for index in range(1, count + 1):
            host = Host(name=f"{self.name}-h{index}", index=index, address=self.address(index),
                        netns=f"fleetdeck-{self.name}-{index}", veth=f"fdv-{self.name}-{index}")
            host_key_pub = self._seed(host, public, whiteouts)
            known_hosts.append(f"{host.address} {host_key_pub.decode().strip()}\n")
            self._network(host)
            self._launch(host)
            self.hosts.append(host)
        _write(self.known_hosts, "".join(known_hosts))
        self._write_inventory()
        self._save()
        self._wait_for_ssh(timeout)
        return self.hosts

    def down(self) -> None:
        """Remove every process, namespace, link, bridge, cgroup and file of this fleet."""
        self.close_connections()
        netns = [n for n in self._names("ip", "netns", "list") if n.startswith(f"fleetdeck-{self.name}-")]
        pids = {int(p) for ns in netns for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()}
        pids |= {h.launcher_pid for h in self._load()} | {p.pid for p in self._launchers.values()}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # unshare ignores SIGTERM; --kill-child takes its host down
        for proc in self._launchers.values():
            proc.wait()
        self._reap(pids)
        for link in self._names("ip", "-o", "link", "show"):
            if link.startswith(f"fdv-{self.name}-") or link == self.bridge:
                _run("ip", "link", "del", link, check=False)
        for ns in netns:
            _run("ip", "netns", "del", ns, check=False)
        for cgroup_root in CGROUP_ROOTS:
            for top in (cgroup_root / "fleetdeck").glob(f"{self.name}-*"):
                for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                top.rmdir()
            with contextlib.suppress(OSError):
                (cgroup_root / "fleetdeck").rmdir()
        if self.dir.exists():
            _run("rm", "-rf", "--one-file-system", str(self.dir))
        self.hosts, self._launchers = [], {}

    def describe(self) -> list[dict[str, str]]:
        return [{"name": h.name, "address": h.address} for h in self._load()]

    def status(self) -> list[dict[str, str]]:
        rows = []
        for host in self._load():
            state = self.ssh(host, "systemctl is-system-running", check=False)
            rows.append({"name": host.name, "address": host.address,
                         "state": state.stdout.strip() or f"unreachable ({state.stderr.strip()})"})
        return rows

    # -- pieces ----------------------------------------------------------------------------------

    def _claim_subnet(self) -> None:
        taken = {int(m) for m in re.findall(r"inet 10\.231\.(\d+)\.", _run("ip", "-o", "-4", "addr").stdout)}
        if self._subnet_fixed and self.subnet in taken:
            raise FleetError(f"10.231.{self.subnet}.0/24 is used by another fleet; pick another --subnet")
        while self.subnet in taken:
            self.subnet = self.subnet % 250 + 1

    def _unwanted_units(self) -> list[str]:
        wants = Path("/etc/systemd/system").glob("*.wants/*")
        return sorted(str(p.relative_to("/")) for p in wants if p.name not in KEEP_WANTS)

    def _seed(self, host: Host, client_key: bytes, whiteouts: list[str]) -> bytes:
        """Files the host sees over the machine's root; returns the host's public key."""
        hostdir = self.dir / "hosts" / host.name
        seed = hostdir / "seed"
        (hostdir / "mnt").mkdir(parents=True)
        (hostdir / "root").mkdir()
        private, public = _keypair()
        _write(seed / "etc/ssh/fleetdeck_host_ed25519_key", private, 0o600)
        _write(seed / "etc/ssh/fleetdeck_host_ed25519_key.pub", public)
        _write(seed / "etc/ssh/sshd_config.d/fleetdeck-test-host.conf", SSHD_CONFIG)
        _write(seed / "root/.ssh/authorized_keys", client_key, 0o600)
        for rc in (".bashrc", ".profile"):  # a fresh server's, not this machine's (pyenv & co.)
            _write(seed / "root" / rc, Path("/etc/skel", rc).read_bytes())
        (seed / "root/.ssh").chmod(0o700)
        _write(seed / "etc/hostname", f"{host.name}\n")
        _write(seed / "etc/hosts", f"127.0.0.1 localhost\n{host.address} {host.name}\n")
        _write(seed / "etc/machine-id", f"{os.urandom(16).hex()}\n", 0o444)
        (seed / "etc/systemd/system").mkdir(parents=True)
        for unit in MASKED:
            (seed / "etc/systemd/system" / unit).symlink_to("/dev/null")
        _write(hostdir / "whiteouts", "".join(f"{w}\n" for w in whiteouts))
        return public

    def _network(self, host: Host) -> None:
        _run("ip", "netns", "add", host.netns)
        _run("ip", "-batch", "-", stdin=f"link add {host.veth} type veth peer name eth0 netns {host.netns}\n"
             f"link set {host.veth} master {self.bridge} up\n")
        # The default route points at an address nobody has: facts get a default interface,
        # and no packet can leave the fleet.
        _run("ip", "-n", host.netns, "-batch", "-", stdin=f"link set lo up\nlink set eth0 up\n"
             f"addr add {host.address}/24 dev eth0\nroute add default via 10.231.{self.subnet}.254\n")

    def _launch(self, host: Host) -> None:
        hostdir = self.dir / "hosts" / host.name
        log = open(hostdir / "console.log", "wb")  # noqa: SIM115 - the host writes to it while it runs
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--pid", "--fork",
             "--kill-child", "--propagation", "private", str(INIT), "boot", str(hostdir), host.name,
             f"fleetdeck/{self.name}-{host.index}", sys.prefix],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        host.launcher_pid = proc.pid
        self._launchers[host.name] = proc

    def _wait_for_ssh(self, timeout: float, hosts: list[Host] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(hosts or self.hosts)
        while pending:
            for host in list(pending):
                proc = self._launchers.get(host.name)
                if proc and proc.poll() is not None:
                    console = (self.dir / "hosts" / host.name / "console.log").read_text(errors="replace")
                    raise FleetError(f"host {host.name} stopped while booting:\n{console[-2000:]}")
                with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 0.5) as s:
                    s.settimeout(1)
                    if s.recv(8).startswith(b"SSH-"):
                        pending.remove(host)
            if pending and time.monotonic() > deadline:
                raise FleetError(f"hosts not ready for SSH after {timeout}s: {[h.name for h in pending]}")
            if pending:
                time.sleep(0.05)

    def _write_inventory(self) -> None:
        inventory = {"all": {"children": {"testfleet": {
            "hosts": {h.name: {"ansible_host": h.address} for h in self.hosts},
            "vars": {"ansible_user": "root",
                     "ansible_python_interpreter": "/usr/bin/python3",
                     "ansible_ssh_private_key_file": str(self.key_file),
                     "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts}"}}}}}
        _write(self.inventory, yaml.safe_dump(inventory, sort_keys=False))

    def _save(self) -> None:
        state = {"name": self.name, "subnet": self.subnet, "hosts": [asdict(h) for h in self.hosts]}
        _write(self.dir / "fleet.json", json.dumps(state, indent=2))

    def _load(self) -> list[Host]:
        if self.hosts:
            return self.hosts
        state_file = self.dir / "fleet.json"
        if not state_file.exists():
            return []
        return [Host(**h) for h in json.loads(state_file.read_text())["hosts"]]

    @contextlib.contextmanager
    def unreachable(self, host: Host):
        """Inside the block the host is off the network (its link down); after it, reachable over SSH again."""
        # An open ControlPersist master would first wait out its keepalives (about a minute).
        self.close_connections([host])
        _run("ip", "link", "set", host.veth, "down")
        try:
            yield
        finally:
            _run("ip", "link", "set", host.veth, "up")
            # The bridge remembers the address as unreachable for a while: forget it, then wait for SSH.
            _run("ip", "neigh", "flush", "to", host.address, check=False)
            self._wait_for_ssh(30, [host])

    def close_connections(self, hosts: list[Host] | None = None) -> None:
        """Close the ControlPersist masters to the hosts: a dead one makes later runs hang, a live one
        lets a new run in without logging in again."""
        for host in hosts or self._load():
            for control_path in (f"{self.control_path_dir}/%C", f"{self.control_path_dir}/t-%C",
                                 str(Path("~/.ansible/cp/%C").expanduser())):
                if Path(control_path).parent.is_dir():
                    _run("ssh", "-o", f"ControlPath={control_path}", "-O", "exit", f"root@{host.address}",
                         check=False)

    @staticmethod
    def _names(*cmd: str) -> list[str]:
        out = _run(*cmd, check=False).stdout
        if cmd[-1] == "show":  # `ip -o link show`: "3: fdv-fd-1@if2: <...>"
            return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    @staticmethod
    def _reap(pids: set[int], timeout: float = 10.0) -> None:
        """Wait until the killed processes are gone, reaping those that were ours or were orphaned to us."""
        deadline = time.monotonic() + timeout
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                except ChildProcessError:  # not ours: gone, or a zombie only its own parent can reap
                    try:
                        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    except (FileNotFoundError, ProcessLookupError):  # gone before or while we read it
                        break
                    if state == "Z":
                        break
                time.sleep(0.02)
