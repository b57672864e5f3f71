"""The vault password file and whole-file Ansible vaults (vault id `fleetdeck`), encrypted in-process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml
from ansible.errors import AnsibleError
from ansible.parsing.vault import VaultLib, VaultSecret

from fleetdeck import files
from fleetdeck.errors import FleetdeckError

VAULT_ID = "fleetdeck"
REPO = Path(__file__).resolve().parents[2]


def password_file() -> Path:
    """Where the vault password lives; scripts/vault-pass-client hands Ansible the same file."""
    if os.environ.get("FLEETDECK_VAULT_PASSWORD_FILE"):
        return Path(os.environ["FLEETDECK_VAULT_PASSWORD_FILE"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "fleetdeck" / "vault-pass"


def new_password() -> str:
    return secrets.token_urlsafe(48)


def read_password(path: Path | None = None) -> bytes:
    path = path or password_file()
    try:
        password = path.read_bytes().strip(b"\r\n")
    except FileNotFoundError:
        raise FleetdeckError(f"no vault password file at {path} (run scripts/bootstrap-vault, "
                             "or set FLEETDECK_VAULT_PASSWORD_FILE)") from None
    if not password:
        raise FleetdeckError(f"vault password file {path} is empty")
    return password


def bootstrap(path: Path | None = None) -> bool:
    """Create the password file with a strong random password; False if one already exists."""
    path = (path or password_file()).absolute()
    if path.exists():
        return False
    if path.resolve().is_relative_to(REPO):
        raise FleetdeckError(f"refusing to keep the vault password inside the repository ({path})")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        files.write_new(path, f"{new_password()}\n".encode(), 0o600)
    except FileExistsError:
        return False
    files.sync_dir(path.parent)
    return True


def encrypt(plaintext: bytes, password: bytes) -> bytes:
    return VaultLib().encrypt(plaintext, VaultSecret(password), vault_id=VAULT_ID)


def decrypt(vaulttext: bytes, password: bytes, source: Path | str) -> bytes:
    if not VaultLib.is_encrypted(vaulttext):
        raise FleetdeckError(f"{source} is not an Ansible vault file")
    try:
        return VaultLib([(VAULT_ID, VaultSecret(password))]).decrypt(vaulttext)
    except AnsibleError as exc:
        raise FleetdeckError(f"cannot decrypt {source} with this vault password "
                             f"(wrong password, or a damaged file): {exc.message}") from None


def encrypt_file(path: Path, variables: dict, password: bytes) -> None:
    """Atomically write `variables` as a whole-file vault, mode 0600."""
    plaintext = yaml.safe_dump(variables, sort_keys=False).encode()
    files.replace(path, encrypt(plaintext, password), 0o600)


def decrypt_file(path: Path, password: bytes) -> dict:
    return parse(decrypt(path.read_bytes(), password, path), path)


def parse(plaintext: bytes, source: Path | str) -> dict:
    """The variables of a YAML vars file (e.g. a decrypted vault); errors say where, never quoting content."""
    try:
        variables = yaml.safe_load(plaintext) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FleetdeckError(f"{source}: not valid YAML{where}: "
                             f"{getattr(exc, 'problem', None) or type(exc).__name__}") from None
    if not isinstance(variables, dict):
        raise FleetdeckError(f"{source}: holds a {type(variables).__name__}, not a mapping of variables")
    return variables
