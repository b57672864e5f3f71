"""Service settings, read from FLEETDECK_* environment variables (all documented in docs/runner.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from . import secret_rules

PACKAGE_DIR = Path(__file__).resolve().parent
# read: look; operate: start and cancel any action (run:*); provision: create, change and decommission
# instances; admin: everything. run:<action> allows one action.
SCOPES = ("read", "operate", "provision", "admin")


class ConfigError(ValueError):
    """The service must not start with this configuration."""


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    password_hash: str  # werkzeug's scrypt or pbkdf2 hash
    scopes: frozenset[str]


@dataclass(frozen=True)
class ExecutionNode:
    """A machine that runs playbooks for the instances whose `fleetdeck_execution_node` names it (nodes.py)."""

    name: str
    host: str
    user: str | None = None  # ssh's default (the service user's name) when unset
    port: int = 22
    identity_file: Path | None = None
    ansible_runner: str = "ansible-runner"  # on the node; ansible-playbook is looked up beside it
    known_hosts: Path | None = None  # default: the inventory's known_hosts, where instances are pinned


@dataclass(frozen=True)
class Settings:
    tokens: tuple[Token, ...]
    project_dir: Path
    inventory: Path
    data_dir: Path
    catalog: Path = PACKAGE_DIR / "actions.yml"
    bind: str = "127.0.0.1:8790"
    connections: int = 1000
    max_streams_per_token: int = 20
    max_concurrent_runs: int = 4
    cancel_grace: float = 10.0
    idle_timeout: float = 600.0
    keep_artifacts: int = 50
    max_body_bytes: int = 64 * 1024
    hook_secret: str | None = None
    hook_target: str = "all"
    hook_tag_pattern: str = r"^refs/tags/v?(\d+\.\d+\.\d+)$"
    hook_window: float = 300.0
    hub_url: str | None = None
    hub_secret: str | None = None
    hub_attempts: int = 6
    hub_backoff: float = 2.0
    console_users: tuple[ConsoleUser, ...] = ()
    console_idle: float = 900.0
    database_url: str | None = dataclasses.field(default=None, repr=False)  # PostgreSQL conninfo; None: SQLite
    replica_id: str = "runner"
    replica_timeout: float = 30.0
    execution_nodes: tuple[ExecutionNode, ...] = ()

    @property
    def backup_store(self) -> Path:
        """The controller's backup store: backup_store_dir of roles/backup/defaults/main.yml as the role resolves
        it in the runner's runs (the runner passes FLEETDECK_BACKUP_STORE on to them)."""
        return Path(os.environ.get("FLEETDECK_BACKUP_STORE")
                    or Path.home() / ".local/share/fleetdeck/backups" / self.inventory.name)


def check_secret(what: str, value: str, bearer: bool = False) -> str:
    """`value` if it passes every rule of secret_rules, else the refusal naming the rule it breaks."""
    problem = secret_rules.problem(value, bearer)
    if problem:
        raise ConfigError(f"{what} is refused by rule {problem}")
    return value


def _json_list(what: str, raw: str) -> list:
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ConfigError(f"{what}: need a JSON list")
    return entries


def _named_entries(what: str, entries: list):
    """(name, entry) of each object of the list, which must have a unique non-empty name."""
    names = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{what}[{i}]: needs a name")
        if entry["name"] in names:
            raise ConfigError(f"{what}[{i}]: duplicate name {entry['name']!r}")
        names.add(entry["name"])
        yield entry["name"], entry


def parse_tokens(raw: str) -> tuple[Token, ...]:
    """JSON list of {name, scopes, sha256 | token}; a plaintext `token` is checked, only its hash is kept."""
    entries = _json_list("tokens", raw)
    if not entries:
        raise ConfigError("tokens: need a non-empty JSON list; the runner refuses to start without auth")
    tokens, digests = [], {}
    for name, entry in _named_entries("tokens", entries):
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"token {name!r}: scopes must be a non-empty list of strings")
        for scope in scopes:
            if scope not in SCOPES and not scope.startswith("run:"):
                raise ConfigError(
                    f"token {name!r}: unknown scope {scope!r} ({', '.join(SCOPES)}, run:<action>, run:*)"
                )
        if "token" in entry:
            if not isinstance(entry["token"], str):
                raise ConfigError(f"token {name!r}: `token` must be a string")
            plain = check_secret(f"token {name!r}", entry["token"], bearer=True)
            digest = hashlib.sha256(plain.encode()).hexdigest()
        else:
            digest = str(entry.get("sha256", "")).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"token {name!r}: needs `token` or a 64-hex-digit `sha256`")
            problem = secret_rules.hash_problem(digest)
            if problem:
                raise ConfigError(f"token {name!r} is refused by rule {problem}")
        if digest in digests:
            raise ConfigError(
                f"token {name!r} is refused by rule duplicate: the same token as {digests[digest]!r}"
            )
        digests[digest] = name
        tokens.append(Token(name, digest, frozenset(scopes)))
    return tuple(tokens)


def parse_console_users(raw: str) -> tuple[ConsoleUser, ...]:
    """JSON list of {name, password_hash, scopes}: hashes from `fleetdeck-runner hash-password`."""
    users = []
    for name, entry in _named_entries("FLEETDECK_CONSOLE_USERS", _json_list("FLEETDECK_CONSOLE_USERS", raw)):
        password_hash = entry.get("password_hash")
        if not isinstance(password_hash, str) or not password_hash.startswith(("scrypt:", "pbkdf2:")):
            raise ConfigError(f"console user {name!r}: password_hash must be a werkzeug scrypt or pbkdf2 hash "
                              "(fleetdeck-runner hash-password)")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(
            isinstance(s, str) and (s in SCOPES or s.startswith("run:")) for s in scopes
        ):
            raise ConfigError(f"console user {name!r}: scopes must be a non-empty list of {', '.join(SCOPES)}, "
                              "run:<action>")
        users.append(ConsoleUser(name, password_hash, frozenset(scopes)))
    return tuple(users)


NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NODE_FIELDS = ("name", "host", "user", "port", "identity_file", "ansible_runner", "known_hosts")


def parse_execution_nodes(raw: str, inventory: Path) -> tuple[ExecutionNode, ...]:
    """JSON list of {name, host, user, port, identity_file, ansible_runner, known_hosts}: name and host required."""
    what = "FLEETDECK_EXECUTION_NODES"
    nodes = []
    for name, entry in _named_entries(what, _json_list(what, raw)):
        where = f"{what}: node {name!r}"
        if not NODE_NAME_RE.match(name):
            raise ConfigError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        unknown = sorted(set(entry) - set(NODE_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(NODE_FIELDS)}")
        for field in ("host", "user", "identity_file", "ansible_runner", "known_hosts"):
            if field in entry and (not isinstance(entry[field], str) or not entry[field].strip()):
                raise ConfigError(f"{where}: {field} must be a non-empty string")
        if "host" not in entry:
            raise ConfigError(f"{where}: host is required")
        port = entry.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"{where}: port must be an integer from 1 to 65535")
        files = {}
        for field, default in (("identity_file", None), ("known_hosts", inventory / "known_hosts")):
            path = Path(entry[field]).expanduser().resolve() if field in entry else default
            if path is not None and not path.is_file():
                raise ConfigError(f"{where}: {field} {path} is not a readable file")
            files[field] = path
        nodes.append(ExecutionNode(name, entry["host"], entry.get("user"), port,
                                   ansible_runner=entry.get("ansible_runner", "ansible-runner"), **files))
    return tuple(nodes)


def _read_secret(env: dict[str, str], name: str) -> str | None:
    """NAME or NAME_FILE (the file form keeps secrets out of the process environment listing)."""
    if env.get(f"{name}_FILE"):
        path = Path(env[f"{name}_FILE"])
        try:
            return path.read_text().strip(secret_rules.ASCII_WHITESPACE)
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return env.get(name) or None


def _database_url(env: dict[str, str]) -> str | None:
    """A postgresql:// URL (it may hold the password: refusals never repeat it)."""
    url = _read_secret(env, "FLEETDECK_DATABASE_URL")
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("FLEETDECK_DATABASE_URL: must be a postgresql:// URL")
    try:
        conninfo_to_dict(url)
    except Exception:  # its message would quote the URL
        raise ConfigError("FLEETDECK_DATABASE_URL: not a valid PostgreSQL connection URL") from None
    return url


def _tag_pattern(pattern: str) -> str:
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ConfigError(f"FLEETDECK_HOOK_TAG_PATTERN: not a regular expression ({exc})") from None
    if groups < 1:
        raise ConfigError("FLEETDECK_HOOK_TAG_PATTERN: needs a group, the version (group 1)")
    return pattern


def from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    raw_tokens = _read_secret(env, "FLEETDECK_RUNNER_TOKENS")
    if not raw_tokens:
        raise ConfigError("no tokens: set FLEETDECK_RUNNER_TOKENS or FLEETDECK_RUNNER_TOKENS_FILE")
    project_dir = Path(env.get("FLEETDECK_PROJECT_DIR", os.getcwd())).resolve()
    if not env.get("FLEETDECK_INVENTORY"):
        raise ConfigError("FLEETDECK_INVENTORY is not set")
    hook_secret = _read_secret(env, "FLEETDECK_HOOK_SECRET")
    hub_secret = _read_secret(env, "FLEETDECK_HUB_SECRET")
    hub_url = env.get("FLEETDECK_HUB_URL") or None
    if hub_url and hub_secret is None:
        raise ConfigError("FLEETDECK_HUB_URL is set without FLEETDECK_HUB_SECRET: callbacks must be signed")

    def number(name: str, default: float, kind=float):
        try:
            value = kind(env.get(name, default))
        except ValueError:
            raise ConfigError(f"{name}: not a number") from None
        if not 0 < value < math.inf:
            raise ConfigError(f"{name}: must be a positive number, not {value}")
        return value

    inventory = Path(env["FLEETDECK_INVENTORY"]).resolve()
    return Settings(
        tokens=parse_tokens(raw_tokens),
        project_dir=project_dir,
        inventory=inventory,
        data_dir=Path(env.get("FLEETDECK_RUNNER_DATA_DIR", "/var/lib/fleetdeck-runner")).resolve(),
        catalog=Path(env.get("FLEETDECK_CATALOG", PACKAGE_DIR / "actions.yml")).resolve(),
        bind=env.get("FLEETDECK_RUNNER_BIND", "127.0.0.1:8790"),
        connections=number("FLEETDECK_RUNNER_CONNECTIONS", 1000, int),
        max_streams_per_token=number("FLEETDECK_RUNNER_MAX_STREAMS", 20, int),
        max_concurrent_runs=number("FLEETDECK_RUNNER_MAX_CONCURRENT", 4, int),
        cancel_grace=number("FLEETDECK_RUNNER_CANCEL_GRACE", 10.0),
        idle_timeout=number("FLEETDECK_RUNNER_IDLE_TIMEOUT", 600.0),
        keep_artifacts=number("FLEETDECK_RUNNER_KEEP_ARTIFACTS", 50, int),
        max_body_bytes=number("FLEETDECK_RUNNER_MAX_BODY", 64 * 1024, int),
        hook_secret=check_secret("FLEETDECK_HOOK_SECRET", hook_secret) if hook_secret is not None else None,
        hook_target=env.get("FLEETDECK_HOOK_TARGET", "all"),
        hook_tag_pattern=_tag_pattern(env.get("FLEETDECK_HOOK_TAG_PATTERN", Settings.hook_tag_pattern)),
        hook_window=number("FLEETDECK_HOOK_WINDOW", 300.0),
        hub_url=hub_url,
        hub_secret=check_secret("FLEETDECK_HUB_SECRET", hub_secret) if hub_secret is not None else None,
        hub_attempts=number("FLEETDECK_HUB_ATTEMPTS", 6, int),
        hub_backoff=number("FLEETDECK_HUB_BACKOFF", 2.0),
        console_users=parse_console_users(_read_secret(env, "FLEETDECK_CONSOLE_USERS") or "[]"),
        console_idle=number("FLEETDECK_CONSOLE_IDLE", 900.0),
        database_url=_database_url(env),
        replica_id=env.get("FLEETDECK_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}",
        replica_timeout=number("FLEETDECK_REPLICA_TIMEOUT", 30.0),
        execution_nodes=parse_execution_nodes(env.get("FLEETDECK_EXECUTION_NODES") or "[]", inventory),
    )
