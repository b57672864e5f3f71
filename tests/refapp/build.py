"""Build reproducible refapp release tarballs.

    python tests/refapp/build.py --out DIR [--version 1.1.0 ...] [--sign-key KEY]

Each release is `refapp-<version>-linux-<arch>.tar.gz` (plus a sha256sum-style
`.sha256`) holding bin/refapp, lib/refapp and the pure-Python PostgreSQL driver
copied from this virtualenv, so the server needs nothing but /usr/bin/python3.
With a signing key (an Ed25519 SSH private key), the `.sha256` gets a `.sha256.sig`
made by `ssh-keygen -Y sign` (docs/releases.md).
"""

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

SOURCE = Path(__file__).resolve().parent / "src" / "refapp"
VENDORED_ROOTS = ("pg8000",)  # plus everything they require, resolved from installed metadata
INSTALLER_FILES = ("RECORD", "INSTALLER", "REQUESTED")  # describe this venv, not the release
MTIME = 1_700_000_000  # fixed timestamp for every member, so rebuilds are byte-identical
SIGNATURE_NAMESPACE = "fleetdeck-release"  # what the app role's release_signature check expects
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
LAUNCHER = """\
#!/usr/bin/python3
import os
import sys

# Releases are unpacked read-only for the service user; do not try to write __pycache__ into them.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib"))

from refapp.cli import main

sys.exit(main())
"""
# bin/refapp-migrate-down, only in a release that ships down-migrations (deployers test for the file).
DOWN_LAUNCHER = """\
#!/bin/sh
exec "$(dirname "$(readlink -f "$0")")/refapp" migrate-down "$@"
"""


@dataclass(frozen=True)
class Manifest:
    migrations: tuple[int, ...]  # numbers of the migrations shipped in lib/refapp/migrations
    schema: int  # schema level the release requires to report healthy
    faults: tuple[str, ...] = ()  # deliberate defects of the release (see refapp/server.py)
    # Migrations this release can undo (migrations/NNNN_*.down.sql, run by bin/refapp-migrate-down); a release
    # with none ships no down-migration at all.
    down: tuple[int, ...] = ()


RELEASES = {
    "1.0.0": Manifest(migrations=(1,), schema=1),
    "1.1.0": Manifest(migrations=(1, 2), schema=2, down=(2,)),
    # Deliberately broken: the code was bumped to require schema 3, but migration 0003 never
    # got written, so /health keeps failing. Used to exercise canary rollback.
    "1.2.0": Manifest(migrations=(1, 2), schema=3),
    # Deliberately faulty only under load: /health stays ok, API requests beyond a few per second
    # fail with 500 (exercises canary analysis against peers).
    "1.3.0": Manifest(migrations=(1, 2), schema=2, faults=("errors_under_load",)),
    # A healthy successor of 1.1.0.
    "1.4.0": Manifest(migrations=(1, 2), schema=2),
}


def arch() -> str:
    machine = platform.machine()
    return DEBIAN_ARCH.get(machine, machine.lower())


def artifact_name(version: str) -> str:
    return f"refapp-{version}-linux-{arch()}.tar.gz"


def vendored_files() -> dict[str, Path]:
    """lib-relative path -> installed file, for the driver and its dependency closure."""
    files: dict[str, Path] = {}
    pending, seen = list(VENDORED_ROOTS), set()
    while pending:
        dist = importlib.metadata.distribution(pending.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for req in map(Requirement, dist.requires or ()):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
        for file in dist.files or ():
            parts = PurePosixPath(file).parts
            if parts[0] == ".." or "__pycache__" in parts or file.name in INSTALLER_FILES:
                continue
            if file.suffix in (".so", ".pyd"):
                raise RuntimeError(f"{dist.metadata['Name']} is not pure Python ({file}); cannot vendor it")
            files[str(PurePosixPath(file))] = Path(str(file.locate()))
    return files


def source_files(manifest: Manifest) -> dict[str, bytes]:
    files = {}
    for path in sorted(SOURCE.rglob("*")):
        rel = path.relative_to(SOURCE)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        shipped = manifest.down if path.name.endswith(".down.sql") else manifest.migrations
        if rel.parts[0] == "migrations" and int(path.name[:4]) not in shipped:
            continue
        files[f"refapp/{rel.as_posix()}"] = path.read_bytes()
    return files


def _tarball(version: str, manifest: Manifest, vendored: dict[str, bytes]) -> bytes:
    top = f"refapp-{version}"
    release_json = json.dumps({"version": version, "schema": manifest.schema, "faults": list(manifest.faults)},
                              indent=2) + "\n"
    members = {
        "VERSION": (version + "\n").encode(),
        "bin/refapp": LAUNCHER.encode(),
        **({"bin/refapp-migrate-down": DOWN_LAUNCHER.encode()} if manifest.down else {}),
        **{f"lib/{name}": data for name, data in vendored.items()},
        **{f"lib/{name}": data for name, data in source_files(manifest).items()},
        "lib/refapp/release.json": release_json.encode(),
    }
    dirs = {name.rsplit("/", depth)[0] for name in members for depth in range(1, name.count("/") + 1)}

    def info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        member = tarfile.TarInfo(f"{top}/{name}" if name else top)
        member.type, member.mode, member.size, member.mtime = kind, mode, size, MTIME
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        return member

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info("", tarfile.DIRTYPE, 0o755))
        for name in sorted(dirs | members.keys()):
            if name in dirs:
                tar.addfile(info(name, tarfile.DIRTYPE, 0o755))
            else:
                data = members[name]
                mode = 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    compressed = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of build-time details.
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


def make_signing_key(path: Path) -> str:
    """Create an Ed25519 test signing key at PATH (unless it exists); return its public key line."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                       check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


def sign(path: Path, key: Path) -> Path:
    """Sign PATH with the SSH private KEY as a release file; return the signature's path."""
    signature = Path(f"{path}.sig")
    signature.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", SIGNATURE_NAMESPACE, str(path)],
                   check=True, capture_output=True)
    return signature


def build(out_dir: Path, versions: list[str] | None = None, sign_key: Path | None = None) -> dict[str, Path]:
    """Write the tarball and .sha256 (signed with SIGN_KEY if given) for each version; return version -> tarball."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vendored = {name: path.read_bytes() for name, path in vendored_files().items()}
    built = {}
    for version in versions or list(RELEASES):
        if version not in RELEASES:
            raise ValueError(f"unknown refapp version {version!r}; known: {', '.join(RELEASES)}")
        tarball = out_dir / artifact_name(version)
        data = _tarball(version, RELEASES[version], vendored)
        tmp = tarball.with_name(tarball.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, tarball)
        digest = hashlib.sha256(data).hexdigest()
        Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")
        if sign_key:
            sign(Path(f"{tarball}.sha256"), sign_key)
        built[version] = tarball
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the tarballs")
    parser.add_argument("--version", action="append", choices=list(RELEASES), help="repeatable; default all")
    parser.add_argument("--sign-key", type=Path, help="Ed25519 SSH private key signing each .sha256")
    args = parser.parse_args()
    for path in build(args.out, args.version, args.sign_key).values():
        print(path)


if __name__ == "__main__":
    main()
