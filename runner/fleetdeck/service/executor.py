"""Runs catalog actions with ansible-runner: a dispatcher that claims queued runs from the store (so a run
created on any replica may start on this one) within the leases and the concurrency limit, one fresh
private data dir per run (scrubbed when the run ends), an allowlisted environment for ansible-playbook,
SIGTERM-grace-SIGKILL for cancel and timeouts; a heartbeat, and the runs of peers that stopped beating."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ansible_runner import Runner, RunnerConfig

from fleetdeck import audit

from . import node_return, nodes, processes
from .catalog import Catalog
from .config import Settings
from .redaction import Redactor
from .store import Store, StoreUnavailable

log = logging.getLogger("fleetdeck.runner")
MAX_EVENT_DATA = 64 * 1024
STORE_RETRY = (0.5, 10.0)  # first and longest wait between attempts to record a run's end in a full store
STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}
# What of the service's environment a run's ansible-playbook gets: an allowlist, so that the service's
# tokens, HMAC secrets (and their *_FILE paths) and whatever else its environment holds stay out of the
# run, of its /proc/<pid>/environ and of ansible-runner's `command` artifact.
CHILD_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSH_AUTH_SOCK",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",  # the strategy's caches: compiled templates, what Mitogen works out from its modules
        "VIRTUAL_ENV",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "FLEETDECK_AUDIT_LOG",
        "FLEETDECK_BACKUP_STORE",
        "FLEETDECK_VAULT_PASSWORD_FILE",
        "FLEETDECK_RUN_SOURCE",
        "FLEETDECK_OPERATOR",
        # set by ansible-runner: where its event callback drops partial event data, the original callback
        "AWX_ISOLATED_DATA_DIR",
        "ORIGINAL_STDOUT_CALLBACK",
    }
)
CHILD_ENV_PREFIXES = ("ANSIBLE_", "LC_")
# ansible-runner's artifacts kept after a run (its command line with the allowlisted environment, its
# status and rc). Everything else goes: partial job events a killed run leaves behind hold raw output.
KEPT_ARTIFACTS = frozenset({"command", "status", "rc"})


def child_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES)}


def scrub(private: Path) -> None:
    """Delete all of a run's private data dir but KEPT_ARTIFACTS."""
    artifacts = private / "artifacts" / "artifacts"
    for path in sorted(private.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.parent == artifacts and path.name in KEPT_ARTIFACTS:
            continue
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):  # not empty: it holds a kept artifact
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


@dataclass
class Control:
    """What the cancel callback reads on every ansible-runner poll."""

    started: float = field(default_factory=time.monotonic)
    last_event: float = field(default_factory=time.monotonic)
    requested: str | None = None  # "canceled" | "interrupted"
    stop_reason: str | None = None  # canceled | timeout | idle timeout | interrupted
    stop_at: float = 0.0


class Executor:
    def __init__(
        self, settings: Settings, store: Store, catalog: Catalog, password_file: Path | None, on_finished=None
    ):
        self.settings, self.store, self.catalog = settings, store, catalog
        self.password_file = password_file
        self.on_finished = on_finished or (lambda run: None)
        self.changed = threading.Condition()  # notified on new events and status changes (SSE waits on it)
        self.replica = settings.replica_id
        self._beat_every = min(5.0, settings.replica_timeout / 3)
        self._next_beat = 0.0
        self._controls: dict[str, Control] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._stop_by: float | None = None  # when stopping: the end of the grace, also for store retries
        self.closed = False  # every run has ended (or could not be recorded): event streams say goodbye
        self._runs_dir = settings.data_dir / "runs"
        self._runs_dir.mkdir(parents=True, exist_ok=True)
        for private in self._runs_dir.iterdir():  # runs a crash cut short were never scrubbed
            scrub(private)
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._dispatcher.start()

    # -- public --------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, run_id: str) -> None:
        """A new run is in the store: the dispatcher (of this replica or a peer) claims it."""
        if not self._stopping:
            self._wake.set()
        elif self.store.take_unstarted(run_id, self.replica):
            self._finish(run_id, "interrupted", None, "runner stopped before the run started")

    def cancel(self, run_id: str) -> bool:
        """Ask a queued, waiting or running run to stop, whichever replica has it; False when it is not active.
        A run on a peer is flagged in the store; that peer's dispatcher reads the flag within a second."""
        if self.store.take_unstarted(run_id, self.replica):
            self._finish(run_id, "canceled", None, "canceled before it started")
            return True
        with self._lock:  # a run this replica claims gets its Control under the same lock
            control = self._controls.get(run_id)
            if control:
                control.requested = "canceled"
                return True
        return self.store.request_cancel(run_id)

    def queue_depth(self) -> int:
        return len(self.store.unclaimed())

    def running(self) -> int:
        return len(self._controls)

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every run (they end `interrupted`) and wait for their threads."""
        with self._lock:
            self._stopping = True
            self._stop_by = self._stop_by or time.monotonic() + self.settings.cancel_grace + grace
            for control in self._controls.values():
                control.requested = "interrupted"
        self._wake.set()
        try:
            # Queued runs stay for a live peer; with none they would start whenever a replica comes back.
            if not self.store.live_peers(self.replica, self.settings.replica_timeout):
                for run_id in self.store.unclaimed():
                    if self.store.take_unstarted(run_id, self.replica):
                        self._finish(run_id, "interrupted", None, "runner stopped before the run started")
        except StoreUnavailable as exc:
            log.error("runner stopping: queued runs are left to the next start (%s)", exc)
        while self._controls and time.monotonic() < self._stop_by:
            time.sleep(0.1)
        self.closed = True
        with contextlib.suppress(StoreUnavailable):
            self.store.leave(self.replica)
        self._notify()

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self.closed:  # a stopping replica keeps beating while its runs end
            try:
                self._keep_alive()
                self._start_pending()
            except StoreUnavailable as exc:  # the queue stays as it is; tried again on the next wake-up
                log.error("cannot start queued runs: %s", exc)
            self._wake.wait(1.0)
            self._wake.clear()

    def _keep_alive(self) -> None:
        """With peers (PostgreSQL): the heartbeat and the runs of peers presumed dead. Then stop requests for
        this replica's runs (a cancel received by a peer, or a peer that presumed this replica dead)."""
        if not self.store.single_replica and time.monotonic() >= self._next_beat:
            self._next_beat = time.monotonic() + self._beat_every
            self.store.heartbeat(self.replica)
            for run_id in self.store.reap_dead(self.replica, self.settings.replica_timeout):
                log.warning("run %s interrupted: its replica stopped beating", run_id)
                self._notify()
                self._until_stored(
                    f"callbacks of run {run_id}", lambda r=run_id: self.on_finished(self.store.get_run(r))
                )
        with self._lock:
            here = list(self._controls)
        for run_id, stop in self.store.stop_requests(here).items():
            with self._lock:
                control = self._controls.get(run_id)
                if control and not control.requested:
                    control.requested = stop

    def _start_pending(self) -> None:
        with self._lock:
            while not self._stopping and len(self._controls) < self.settings.max_concurrent_runs:
                run = self.store.claim_run(self.replica, self.catalog.actions)
                if run is None:
                    break
                self._controls[run["id"]] = Control()
                threading.Thread(target=self._execute, args=(run,), name=f"run-{run['id']}", daemon=True).start()

    # -- one run -------------------------------------------------------------------------------

    def _execute(self, run: dict) -> None:
        run_id = run["id"]
        control = self._controls[run_id]
        status, rc, reason = "error", None, None
        try:
            action = self.catalog.actions[run["action"]]
            redactor = Redactor.from_inventory(
                self.settings.inventory,
                self.password_file,
                also=(self.settings.hook_secret, self.settings.hub_secret),
            )
            self.store.update_run(run_id, status="running", started=time.time())
            self._notify()
            status, rc, reason = self._run_playbook(run, action, redactor, control)
        except Exception as exc:  # the run must end with a status whatever went wrong
            log.exception("run %s failed to execute", run_id)
            reason = f"runner error: {type(exc).__name__}"
        finally:
            processes.stop_run(run_id, 0)  # nothing of a finished run may survive it
            scrub(self._runs_dir / run_id)
            with self._lock:
                self._controls.pop(run_id, None)
            self._finish(run_id, status, rc, reason)
            self._rotate_artifacts()
            self._wake.set()

    def _run_playbook(self, run: dict, action, redactor: Redactor, control: Control):
        run_id = run["id"]
        private = self._runs_dir / run_id
        (private / "env").mkdir(parents=True, mode=0o700)
        # ansible-runner ignores a `settings` argument unless env/settings exists (it holds no secrets).
        (private / "env" / "settings").write_text(
            json.dumps({"pexpect_timeout": 0.5, "suppress_output_file": True})
        )
        options = {
            "limit": run["target"],
            "extravars": {**run["params"], "fleetdeck_target": run["target"]},
            "cmdline": "--check --diff" if run["check"] else None,
            "suppress_env_files": True,
            "quiet": True,
            "ident": "artifacts",
            "fact_cache_type": "memory",
        }
        envvars = {
            "FLEETDECK_RUN_SOURCE": processes.run_marker(run_id),
            "FLEETDECK_OPERATOR": run["operator"],
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        }
        events: queue.Queue = queue.Queue()

        def event_handler(event: dict) -> bool:
            events.put(event)
            return False  # raw events would hold unredacted text on disk

        def cancel() -> bool:
            return self._should_kill(run_id, control, action.timeout)

        node = nodes.find(self.settings.execution_nodes, run.get("node"))
        if node:
            # ssh gets the run's marker: cancel, timeouts and a restart find it like a local ansible-playbook
            ssh_env = child_env(dict(os.environ)) | {"FLEETDECK_RUN_SOURCE": envvars["FLEETDECK_RUN_SOURCE"]}
            runner = nodes.remote_job(node, self.settings, private, action.playbook, self.password_file,
                                      options, envvars, ssh_env, event_handler, cancel)
        else:
            runner = self._local_runner(private, action, options, envvars, event_handler, cancel)
        thread = threading.Thread(target=runner.run, name=f"ansible-runner-{run_id}", daemon=True)
        thread.start()
        hosts: dict = {}
        last_seq = 0
        unstored: list[dict] = []  # events the store could not take yet (disk full), tried again
        while thread.is_alive() or not events.empty():
            batch = self._drain(events)
            if batch:
                last_seq = max(last_seq, *(event.get("counter", 0) for event in batch))
                control.last_event = time.monotonic()
                hosts = self._store_events(run_id, batch, redactor, unstored) or hosts
        thread.join()
        if unstored:

            def store_the_rest():
                self.store.add_events(run_id, unstored)
                self.store.update_run(run_id, hosts=hosts)

            self._until_stored(f"events of run {run_id}", store_the_rest)
        if node and runner.returned and not control.stop_reason:
            self._apply_returned(run, node.name, private, runner.staged, last_seq + 1)
        if control.stop_reason:
            status = (
                "canceled"
                if control.stop_reason == "canceled"
                else "interrupted"
                if control.stop_reason == "interrupted"
                else "timeout"
            )
            return status, runner.rc, control.stop_reason
        status = (
            runner.status if runner.status in ("successful", "failed", "timeout", "canceled") else "error"
        )
        explanation = getattr(runner, "explanation", None)  # a remote run's broken connection, naming the node
        reason = None if status == "successful" else explanation or f"ansible-playbook exited with rc {runner.rc}"
        return status, runner.rc, redactor.text(reason) if reason else None

    def _apply_returned(self, run: dict, node: str, private: Path, staged: dict[str, str], seq: int) -> None:
        """What the node run wrote on its controller, applied on this one (node_return.py): the run's last event
        and a line of its audit trail say what was applied and what was not."""
        try:
            applied = node_return.apply(
                private / nodes.RETURNED, staged, self.settings.inventory, self.password_file, audit.log_path(),
                self.settings.backup_store, change=f"{run['action']} run {run['id']} on execution node {node}")
        except OSError as exc:  # a full disk, a read-only store: what was applied stays, the rest is named
            applied = node_return.Applied(conflicts=[f"could not apply the rest: {exc}"])
        if applied.conflicts:
            log.warning("run %s: not applied from node %s: %s", run["id"], node, "; ".join(applied.conflicts))
        detail = {"node": node, "inventory": applied.inventory, "audit_lines": applied.audit_lines,
                  "backups": applied.backups, "conflicts": applied.conflicts}
        summary = (f"execution node {node}: applied {len(applied.inventory)} inventory file(s), "
                   f"{applied.audit_lines} audit line(s), {len(applied.backups)} backup file(s)"
                   + (f"; NOT applied: {'; '.join(applied.conflicts)}" if applied.conflicts else ""))
        event = {"seq": seq, "type": "node_returned", "host": None, "task": None,
                 "created": datetime.now(UTC).isoformat(), "stdout": summary, "data": detail}

        def record():
            self.store.add_events(run["id"], [event])
            self.store.audit(run["operator"], "run.node_returned", run["id"], detail)

        self._until_stored(f"controller state of run {run['id']}", record)
        self._notify()

    def _local_runner(self, private: Path, action, options: dict, envvars: dict, event_handler, cancel) -> Runner:
        """ansible_runner.run_async without its risky defaults: the environment is cut down to the allowlist
        after ansible-runner seeded it with the service's, facts are not cached on disk, and host keys are
        checked as ansible.cfg says (ansible-runner's StrictHostKeyChecking=no would win over it)."""
        project = self.settings.project_dir
        cmdline = [f"--vault-id fleetdeck@{self.password_file}"] if self.password_file else []
        envvars = {
            **envvars,
            # ansible-playbook of this Python environment, even when its bin/ is not on PATH
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        if (project / "ansible.cfg").is_file():
            envvars["ANSIBLE_CONFIG"] = str(project / "ansible.cfg")
        if self.password_file:
            # ansible.cfg's vault_identity_list runs scripts/vault-pass-client: point it at the same file.
            envvars["FLEETDECK_VAULT_PASSWORD_FILE"] = str(self.password_file)
        config = RunnerConfig(
            private_data_dir=str(private),
            project_dir=str(project),
            playbook=str(project / action.playbook),
            inventory=str(self.settings.inventory),
            envvars=envvars,
            **{**options, "cmdline": " ".join([*cmdline, options["cmdline"] or ""]).strip() or None},
        )
        config.prepare()
        config.env = child_env(config.env)
        if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:  # ansible-runner turns it off; ansible.cfg decides
            config.env.pop("ANSIBLE_HOST_KEY_CHECKING", None)
        return Runner(config, event_handler=event_handler, cancel_callback=cancel)

    def _should_kill(self, run_id: str, control: Control, job_timeout: float) -> bool:
        """A stop reason appears: SIGTERM now; after the grace, True lets ansible-runner SIGKILL the group."""
        now = time.monotonic()
        if control.stop_reason is None:
            if control.requested:
                control.stop_reason = control.requested
            elif now - control.started > job_timeout:
                control.stop_reason = "timeout"
            elif now - control.last_event > self.settings.idle_timeout:
                control.stop_reason = "idle timeout"
            if control.stop_reason:
                control.stop_at = now
                processes.signal_run(run_id, signal.SIGTERM)
            return False
        return now - control.stop_at > self.settings.cancel_grace

    @staticmethod
    def _drain(events: queue.Queue) -> list[dict]:
        try:
            batch = [events.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < 500:
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store_events(
        self, run_id: str, batch: list[dict], redactor: Redactor, unstored: list[dict]
    ) -> dict | None:
        rows, hosts = [], None
        for event in batch:
            data = event.get("event_data", {})
            kept = redactor.data(
                {k: v for k, v in data.items() if k not in ("uuid", "playbook_uuid", "play_uuid")}
            )
            if len(json.dumps(kept, default=str)) > MAX_EVENT_DATA:
                kept = {k: v for k, v in kept.items() if k != "res"} | {"truncated": True}
            rows.append(
                {
                    "seq": event.get("counter", 0),
                    "type": event.get("event", "verbose"),
                    "host": kept.get("host"),
                    "task": kept.get("task"),  # a templated task name can hold a secret
                    "created": event.get("created"),
                    "stdout": redactor.text(event.get("stdout", "")),
                    "data": json.loads(json.dumps(kept, default=str)),
                }
            )
            if event.get("event") == "playbook_on_stats":
                hosts = self._host_summary(data)
        unstored.extend(rows)
        try:
            self.store.add_events(run_id, unstored)
            unstored.clear()
            if hosts is not None:
                self.store.update_run(run_id, hosts=hosts)
        except StoreUnavailable as exc:
            log.warning("run %s: %d event(s) wait in memory for the store: %s", run_id, len(unstored), exc)
        self._notify()
        return hosts

    @staticmethod
    def _host_summary(stats: dict) -> dict:
        names = {h for key in STAT_KEYS for h in stats.get(key) or {}}
        summary = {}
        for host in sorted(names):
            counts = {ours: int((stats.get(theirs) or {}).get(host, 0)) for theirs, ours in STAT_KEYS.items()}
            counts["result"] = (
                "unreachable"
                if counts["unreachable"]
                else "failed"
                if counts["failed"]
                else "changed"
                if counts["changed"]
                else "ok"
            )
            summary[host] = counts
        return summary

    def _finish(self, run_id: str, status: str, rc: int | None, reason: str | None) -> None:
        if not self._until_stored(
            f"end of run {run_id}", lambda: self.store.finish_run(run_id, status, rc, reason)
        ):
            return
        log.info("run %s finished: %s%s", run_id, status, f" ({reason})" if reason else "")
        self._notify()
        self._until_stored(f"callbacks of run {run_id}", lambda: self.on_finished(self.store.get_run(run_id)))

    def _until_stored(self, what: str, write) -> bool:
        """A full or failing store must not lose a run's end: retry, backing off, until it is written.
        Only a stopping runner gives up, at the end of its grace: the next start marks the run interrupted."""
        wait = STORE_RETRY[0]
        while True:
            try:
                write()
                return True
            except StoreUnavailable as exc:
                if self._stop_by is not None and time.monotonic() > self._stop_by:
                    log.error("runner stopping: the %s is left to the next start (%s)", what, exc)
                    return False
                log.error("cannot record the %s yet, retrying in %.1fs: %s", what, wait, exc)
                time.sleep(wait)
                wait = min(wait * 2, STORE_RETRY[1])

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _rotate_artifacts(self) -> None:
        dirs = sorted((p for p in self._runs_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        active = set(self._controls)
        for old in dirs[: -self.settings.keep_artifacts]:
            if old.name not in active:
                shutil.rmtree(old, ignore_errors=True)


def kill_leftovers(run_ids: list[str]) -> None:
    """After a crash: the interrupted runs' ansible-playbook processes may still be running. Stop them."""
    for run_id in run_ids:
        if processes.process_groups(run_id):
            log.warning("stopping processes left behind by interrupted run %s", run_id)
            processes.stop_run(run_id, 5.0)
