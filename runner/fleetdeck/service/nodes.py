"""Remote execution nodes: a run whose instances name a node (`fleetdeck_execution_node`) is executed there
with ansible-runner's own streaming, `transmit | ssh NODE ansible-runner worker | process`.

The node needs python3, ansible-runner (ansible-playbook beside it) and the collections; everything else
travels in the transmit stream: the project's Ansible content and the inventory (vaults still encrypted)
staged under the run's private data dir, and the vault password as a pexpect answer inside the stream's
job arguments (never in a file, an argument or the environment on either side). The worker runs under
WRAPPER, a dead man's switch: when the SSH connection's stdin ends (the run is over, canceled, timed out,
or the runner is gone) it stops the worker, every process of the run and removes the worker's private dir.
What the run writes on its controller (the node) comes back with the artifacts: node_return.py.
"""

from __future__ import annotations

import collections
import contextlib
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import ansible_runner

from fleetdeck import vault
from fleetdeck.inventory import Inventory

from . import node_return
from .config import ExecutionNode, Settings

NODE_VAR = "fleetdeck_execution_node"
# What of the project a run needs on the node (scripts/ need the fleetdeck package, which nodes do not have).
PROJECT_CONTENT = ("ansible.cfg", "roles", "playbooks", "collections")
VAULT_PROMPT = r"^Vault password \(fleetdeck\):\s*?$"
STDERR_KEPT = 20  # last lines of ssh's stderr kept for a failure reason
# In the private data dir: the run's controller-side state (node_return.py), inside the artifact dir of
# ident `artifacts` (the executor's), which the worker streams back when the run ends.
RETURNED = Path("artifacts", "artifacts", "controller")
# Runs on the node as `python3 -c WRAPPER RUNNER GRACE RETURNED`, the transmit stream on its stdin.
WRAPPER = r"""
import ctypes, os, shutil, signal, subprocess, sys, tempfile, time
runner = shutil.which(sys.argv[1])
if runner is None:
    sys.exit(f"fleetdeck: {sys.argv[1]} not found on the execution node")
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: what the run orphans stays ours to stop
private = tempfile.mkdtemp(prefix="fleetdeck-run-")
returned = os.path.join(private, sys.argv[3])
env = dict(os.environ, PATH=os.path.dirname(runner) + os.pathsep + os.environ.get("PATH", ""),
           FLEETDECK_AUDIT_LOG=os.path.join(returned, "audit.log"),
           FLEETDECK_BACKUP_STORE=os.path.join(returned, "backups"))
worker = subprocess.Popen([runner, "worker", "--private-data-dir", private, "--delete"],
                          stdin=subprocess.PIPE, env=env)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # only the worker answers on the connection
try:
    while chunk := os.read(0, 65536):
        worker.stdin.write(chunk)
        worker.stdin.flush()
except OSError:
    pass
if worker.poll() is None:
    worker.terminate()  # ansible-runner's SIGTERM handler cancels: SIGKILL to ansible-playbook's group
    try:
        worker.wait(float(sys.argv[2]))
    except subprocess.TimeoutExpired:
        worker.kill()
worker.wait()

def descendants():
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parents[int(pid)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, todo = set(), [os.getpid()]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(kids)
        todo += kids
    return found

for _ in range(50):
    left = descendants()
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    time.sleep(0.1)
shutil.rmtree(private, ignore_errors=True)
"""


class NodeRefused(Exception):
    """The run's instances do not map to one execution node (or to none)."""

    def __init__(self, code: str, message: str, nodes: dict[str, list[str]]):
        super().__init__(message)
        self.code, self.nodes = code, nodes  # nodes: node name ("local": this runner) -> its instances


def select(nodes: tuple[ExecutionNode, ...], inv: Inventory, instances: list[str]) -> str | None:
    """The node all `instances` name, None when none names one; NodeRefused for a mix or an unknown node."""
    by_node: dict[str, list[str]] = {}
    for instance in instances:
        named = inv.host_var(instance, NODE_VAR)
        by_node.setdefault("local" if named in (None, "") else str(named), []).append(instance)
    known = {node.name for node in nodes}
    unknown = sorted(set(by_node) - known - {"local"})
    if unknown:
        raise NodeRefused(
            "unknown_execution_node",
            f"{NODE_VAR} names execution node(s) {', '.join(unknown)} that the runner does not define "
            f"(FLEETDECK_EXECUTION_NODES): instance(s) {', '.join(i for n in unknown for i in by_node[n])}",
            by_node,
        )
    if len(by_node) > 1:
        parts = "; ".join(f"{node}: {', '.join(names)}" for node, names in sorted(by_node.items()))
        raise NodeRefused(
            "mixed_execution_nodes",
            f"the target's instances run on different execution nodes ({parts}); start one run per node "
            "(e.g. per region group)",
            by_node,
        )
    (only,) = by_node
    return None if only == "local" else only


def find(nodes: tuple[ExecutionNode, ...], name: str | None) -> ExecutionNode | None:
    return next((node for node in nodes if node.name == name), None) if name else None


def stage(private: Path, project: Path, inventory: Path, playbook: str, password_file: Path | None) -> None:
    """Copy what ansible-playbook reads on the node into the run's private data dir (project/, RETURNED/inventory):
    PROJECT_CONTENT and the playbook's own directory, the inventory but the vault password file."""
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", ".git")
    secret = password_file.resolve() if password_file else None

    def ignore(directory: str, names: list[str]) -> set[str]:
        return set(skipped(directory, names)) | {n for n in names if Path(directory, n).resolve() == secret}

    wanted = list(PROJECT_CONTENT)
    parent = Path(playbook).parent
    if not any(parent.is_relative_to(content) for content in PROJECT_CONTENT):  # a catalog's own playbooks
        wanted.append(playbook if parent == Path(".") else str(parent))
    (private / "project").mkdir()
    for relative in wanted:
        source, target = project / relative, private / "project" / relative
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(inventory, private / RETURNED / node_return.INVENTORY, ignore=ignore)


def job(private: Path, playbook: str, options: dict, envvars: dict, password: bytes | None) -> dict:
    """ansible-runner's arguments of a run staged in `private`, as the transmit stream carries them."""
    envvars = {
        **envvars,
        # ansible-runner would turn host key checking off; the project's ansible.cfg checks host keys.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # ansible.cfg's vault client reads a local file; on the node the password comes through the prompt.
        "ANSIBLE_VAULT_IDENTITY_LIST": "fleetdeck@prompt" if password else "",
    }
    return {
        **options,
        "private_data_dir": str(private),
        "playbook": str(private / "project" / playbook),
        "inventory": str(private / RETURNED / node_return.INVENTORY),
        "envvars": envvars,
        "passwords": {VAULT_PROMPT: password.decode()} if password else {},
    }


def remote_job(node: ExecutionNode, settings: Settings, private: Path, playbook: str, password_file: Path | None,
               options: dict, envvars: dict, ssh_env: dict, event_handler, cancel_callback) -> RemoteJob:
    """The run staged in `private` for `node`, ready to run()."""
    stage(private, settings.project_dir, settings.inventory, playbook, password_file)
    password = vault.read_password(password_file) if password_file else None
    return RemoteJob(node, job(private, playbook, options, envvars, password), ssh_env, event_handler,
                     cancel_callback, settings.cancel_grace, node_return.snapshot(private / RETURNED))


def ssh_command(node: ExecutionNode, grace: float) -> list[str]:
    remote = shlex.join(["python3", "-c", WRAPPER, node.ansible_runner, str(grace), str(RETURNED)])
    return [
        "ssh", "-T",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={node.known_hosts}",
        "-o", "ControlMaster=no",
        "-o", "ConnectTimeout=15",
        "-o", "ServerAliveInterval=15",
        "-p", str(node.port),
        *(["-i", str(node.identity_file), "-o", "IdentitiesOnly=yes"] if node.identity_file else []),
        *(["-l", node.user] if node.user else []),
        "--", node.host, remote,
    ]


class RemoteJob:
    """One run on a node: the local side of the pipeline. `run()` returns when the worker's stream ended;
    then `status`, `rc` and, when the stream broke, `explanation` (naming the node) are set; `returned` says
    whether the worker's final artifacts (RETURNED among them) arrived whole, `staged` is what RETURNED's
    inventory started from (node_return.snapshot)."""

    def __init__(self, node: ExecutionNode, job_kwargs: dict, env: dict, event_handler, cancel_callback,
                 grace: float, staged: dict[str, str]):
        self.node, self.job_kwargs, self.env = node, job_kwargs, env
        self.event_handler, self.cancel_callback, self.grace = event_handler, cancel_callback, grace
        self.status, self.rc, self.explanation = "unstarted", None, None
        self.staged, self.returned = staged, False
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_KEPT)

    def run(self) -> None:
        private = Path(self.job_kwargs["private_data_dir"])
        ssh = subprocess.Popen(ssh_command(self.node, self.grace), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=self.env, start_new_session=True)
        stderr = threading.Thread(target=self._read_stderr, args=(ssh,), daemon=True)
        stderr.start()
        threading.Thread(target=self._transmit, args=(ssh,), daemon=True).start()
        explained: list[str] = []

        def status(data: dict, runner_config=None) -> None:
            self.status = data["status"]
            if data.get("job_explanation"):
                explained.append(data["job_explanation"])

        processor = threading.Thread(target=ansible_runner.interface.run, daemon=True, kwargs={
            "streamer": "process", "_input": ssh.stdout, "private_data_dir": str(private), "ident": "artifacts",
            "quiet": True, "event_handler": self.event_handler, "status_handler": status,
            "artifacts_handler": self._artifacts_arrived})
        processor.start()
        killed = False
        while processor.is_alive():
            processor.join(0.5)
            if not killed and self.cancel_callback():
                ssh.kill()  # the node's wrapper sees the connection end and stops the run there
                killed = True
        with contextlib.suppress(OSError, ValueError):  # a transmit cut short may still hold it
            ssh.stdin.close()  # the worker's stream ended: the wrapper on the node may go
        try:
            ssh.wait(self.grace + 5)
        except subprocess.TimeoutExpired:
            ssh.kill()
            ssh.wait()
        stderr.join(5)  # ssh's last words (why it could not connect) are read before they are explained
        rc_file = private / "artifacts" / "artifacts" / "rc"
        self.rc = int(rc_file.read_text()) if rc_file.is_file() and rc_file.read_text().strip().isdigit() else None
        if self.status not in ("successful", "failed", "canceled", "timeout"):
            self.status = "error"
            self.explanation = self._explain(ssh.returncode, explained)

    def _artifacts_arrived(self, artifact_dir: str) -> None:
        self.returned = True  # called only once the whole archive is unpacked

    def _transmit(self, ssh: subprocess.Popen) -> None:
        # A connection that broke (or was closed) ends it; the process side tells why.
        with contextlib.suppress(OSError, ValueError):
            ansible_runner.interface.run(streamer="transmit", _output=ssh.stdin, **self.job_kwargs)

    def _read_stderr(self, ssh: subprocess.Popen) -> None:
        for line in ssh.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def _explain(self, rc: int | None, explained: list[str]) -> str:
        where = f"execution node {self.node.name} ({self.node.host} port {self.node.port})"
        detail = "; ".join(line for line in self._stderr if line.strip())[-600:]
        if rc == 255:
            return f"{where} unreachable over SSH: {detail or 'ssh exited with 255'}"
        return f"{where}: the remote run broke off (ssh rc {rc}): {detail or '; '.join(explained) or 'no output'}"

