"""Change the vault password of every vault.yml in an environment: all or none, and crash-safe.

1. decrypt every vault with the current password (any failure: stop, nothing touched);
2. write re-encrypted copies (.vault.yml.rekey-new, verified) and the new password (<file>.new);
3. write the journal: from here on the rekey is rolled forward;
4. per vault: keep the original as .vault.yml.rekey-old, move the copy in; then the password file,
   keeping the old one as <file>.old;
5. delete backups, then the journal.
`recover` completes a rekey that has a journal and discards the leftovers of one that has none.
FLEETDECK_TEST_CRASH_AT=<step> SIGKILLs the process at a step of STEPS, for tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from fleetdeck import files, inventory, vault
from fleetdeck.errors import Refused

JOURNAL = ".rekey-journal.json"
NEW, OLD = ".rekey-new", ".rekey-old"
STEPS = ("rekey:staged", "rekey:journal", "rekey:vault", "rekey:password")


def rekey(env: str | Path, new_password_file: Path | None = None) -> list[Path]:
    """Re-encrypt the environment's vaults with a new password and install it; returns the vault paths.

    Call `recover` first: an unfinished rekey must be settled before a new one starts.
    """
    env = inventory.load(env).path
    with files.env_lock(env):
        if (env / JOURNAL).exists():
            raise Refused(f"a rekey of {env} is unfinished; run recover first")
        password_file = vault.password_file().absolute()
        old = vault.read_password(password_file)
        new = vault.read_password(new_password_file) if new_password_file else vault.new_password().encode()
        if new == old:
            raise Refused("the new vault password is the same as the current one")
        vaults = sorted(env.glob("host_vars/*/vault.yml"))
        plaintexts = [vault.decrypt(path.read_bytes(), old, path) for path in vaults]
        try:
            for path, plaintext in zip(vaults, plaintexts, strict=True):
                files.write_new(_sibling(path, NEW), vault.encrypt(plaintext, new), 0o600)
                vault.decrypt(_sibling(path, NEW).read_bytes(), new, _sibling(path, NEW))
            files.write_new(_sibling(password_file, NEW), new + b"\n", 0o600)
            files.crash_point("rekey:staged")
            journal = {"password_file": str(password_file), "vaults": [str(p) for p in vaults]}
            files.replace(env / JOURNAL, json.dumps(journal, indent=2).encode(), 0o600)
        except BaseException:
            _discard(env, password_file)
            raise
        files.crash_point("rekey:journal")
        _roll_forward(env, journal)
    return vaults


def recover(env: str | Path) -> str | None:
    """Settle an interrupted rekey; says what was done, or None if there was nothing to do."""
    env = inventory.load(env).path
    with files.env_lock(env):
        if (env / JOURNAL).exists():
            journal = json.loads((env / JOURNAL).read_text())
            _roll_forward(env, journal)
            return (f"completed an interrupted rekey: {len(journal['vaults'])} vault file(s) and "
                    f"{journal['password_file']} now use the new password")
        if _discard(env, vault.password_file().absolute()):
            return "discarded the leftovers of a rekey interrupted before it switched anything"
    return None


def _roll_forward(env: Path, journal: dict) -> None:
    vaults = [Path(p) for p in journal["vaults"]]
    password_file = Path(journal["password_file"])
    for path in [*vaults, password_file]:
        staged, backup = _sibling(path, NEW), _sibling(path, OLD)
        if staged.exists():
            if not backup.exists():
                os.link(path, backup)
            os.replace(staged, path)
            files.sync_dir(path.parent)
            files.crash_point("rekey:vault" if path != password_file else "rekey:password")
    for path in [*vaults, password_file]:
        with contextlib.suppress(FileNotFoundError):
            _sibling(path, OLD).unlink()
    (env / JOURNAL).unlink()
    files.sync_dir(env)


def _discard(env: Path, password_file: Path) -> bool:
    leftovers = [*env.glob(f"host_vars/*/.vault.yml{NEW}"), _sibling(password_file, NEW)]
    found = [p for p in leftovers if p.exists()]
    for path in found:
        path.unlink()
    return bool(found)


def _sibling(path: Path, suffix: str) -> Path:
    """Hidden companion file: Ansible's vars loader and directory inventories skip dotfiles."""
    return path.with_name(f".{path.name}{suffix}")

