# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""A cache of compiled modules on each managed host, for Mitogen's interpreter there.

Mitogen sends the Python modules a host needs (its own, ansible_mitogen's, module_utils, the Ansible modules) as
source, and the host compiles each of them again in every run: about a quarter of that interpreter's CPU in an
idempotent deploy. `install()` runs on the host, before Mitogen's interpreter there imports anything else:
`mitogen.core` and `ansible_mitogen.runner` then compile through a cache of code objects (marshal) in
~/.cache/fleetdeck/mitogen-code of the account the interpreter runs as. Sources carry no task arguments (Mitogen
passes those separately), only code the controller sends anyway. The directory is its owner's alone (0700); one
that is not, or any error of the disk, means compiling as before.

The controller sends this file's source and runs `install()` in each new context (mitogen_import_cache.install),
so it must run on every Python ansible-core supports on targets (3.8 and later) with the standard library
only."""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import pwd
import stat
import sys
import tempfile
import types


def cache_directory():
    home = pwd.getpwuid(os.geteuid()).pw_dir  # not $HOME, which become may leave at the login user's
    return os.path.join(home, ".cache", "fleetdeck", "mitogen-code")


def usable(directory):
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


class CodeCache:
    def __init__(self, directory, original_compile):
        self.directory = directory
        self._compile = original_compile
        self._salt = f"{sys.version} {sys.implementation.cache_tag}".encode()

    def compile(self, source, filename, mode, flags=0, dont_inherit=False, optimize=-1):
        if mode != "exec" or not isinstance(source, (str, bytes)) or not isinstance(filename, str):
            return self._compile(source, filename, mode, flags, dont_inherit, optimize)
        data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
        settings = f"{filename} {flags} {bool(dont_inherit)} {optimize}"
        key = hashlib.sha256(b"\0".join((self._salt, settings.encode("utf-8", "surrogateescape"), data))).hexdigest()
        path = os.path.join(self.directory, key)
        with contextlib.suppress(OSError, EOFError, ValueError, TypeError):  # no entry, or a damaged one
            with open(path, "rb") as entry:
                code = marshal.load(entry)  # noqa: S302 - our own entries, in a directory only we can write
            if isinstance(code, types.CodeType) and code.co_filename == filename:
                return code
        code = self._compile(source, filename, mode, flags, dont_inherit, optimize)
        self._write(path, marshal.dumps(code))
        return code

    def _write(self, path, data):
        try:
            fd, partial = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as entry:
                entry.write(data)
            os.replace(partial, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(partial)


def install(directory=None):
    """Make Mitogen's importer and ansible_mitogen's module runner on this host compile through the cache.
    Returns the cache, or None when the directory cannot be used."""
    import builtins

    import mitogen.core

    directory = directory or cache_directory()
    if not usable(directory):
        return None
    cache = CodeCache(directory, builtins.compile)
    mitogen.core.compile = cache.compile  # a module global shadows the builtin for exec_module's lookup
    import ansible_mitogen.runner  # imported through mitogen.core, so compiled through the cache

    ansible_mitogen.runner.compile = cache.compile
    return cache
