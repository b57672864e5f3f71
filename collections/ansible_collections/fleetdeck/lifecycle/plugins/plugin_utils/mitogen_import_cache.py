# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Mitogen compiles each Python module it sends to a host, or scans for the module_utils an Ansible module
needs, only to read the module's imports from the code object; it does so in every run, several times per
module, and on a small run that is most of its connection process's CPU. It also strips the comments and
docstrings of its own modules before sending them (minifying: about 0.6 CPU-s for all of them), again in
every run. The caches below keep those import lists and minified sources on disk, keyed by a hash of the
source, so that later runs skip the work.

`install()` swaps the `compile` that mitogen.master and ansible_mitogen.module_finder look up for one that
answers from the cache, `mitogen.imports.codeobj_imports` for one that reads the cached answer, and
`mitogen.minify.minimize_source` for one that reads the cached text. Both modules use `compile` for nothing
but those import scans. Mitogen is imported here only by `install()`, which the strategy calls once it knows
Mitogen is there. A minified source is sent to the hosts and run there: the cache directory is as trusted as
the Python packages it comes from, so it is its owner's alone (0700).

`list_collections_once()` spares each task worker Mitogen's listing of the installed collections."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from ansible.utils.display import Display
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import disk_cache, mitogen_target_code_cache

display = Display()


class Imports:
    """What the cache's compile returns instead of a code object: the imports Mitogen would read from it."""

    def __init__(self, imports):
        self.imports = imports


def _valid(entry) -> bool:
    return isinstance(entry, list) and all(
        isinstance(item, list) and len(item) == 3 and isinstance(item[0], int) and isinstance(item[1], str)
        and isinstance(item[2], list) and all(isinstance(name, str) for name in item[2])
        for item in entry
    )


class ImportCache:
    """Import lists by source hash: in memory for this run, in `directory` (one small JSON file per source)
    for later runs. A damaged entry only means compiling again."""

    def __init__(self, directory: str, codeobj_imports, salt: str):
        self.directory = directory
        self._codeobj_imports = codeobj_imports
        self._salt = salt.encode()
        self._memory: dict[str, list] = {}

    def compile(self, source, filename, mode, *args, **kwargs) -> Imports:
        data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else bytes(source)
        key = hashlib.sha256(b"\0".join((self._salt, mode.encode(), data))).hexdigest()
        imports = self._memory.get(key)
        if imports is None:
            imports = self._load(key)
        if imports is None:
            # Compiled here, as Mitogen would: a syntax error is raised where it expects one.
            code = compile(source, filename, mode, *args, **kwargs)
            imports = [[level, name, list(names)] for level, name, names in self._codeobj_imports(code)]
            self._store(key, imports)
        self._memory[key] = imports
        return Imports(imports)

    def codeobj_imports(self, code):
        if isinstance(code, Imports):
            return ((level, name, tuple(names)) for level, name, names in code.imports)
        return self._codeobj_imports(code)

    def _load(self, key: str):
        try:
            imports = json.loads(disk_cache.read(self.directory, key) or b"")
        except ValueError:
            return None
        return imports if _valid(imports) else None

    def _store(self, key: str, imports: list) -> None:
        disk_cache.write(self.directory, key, json.dumps(imports).encode())


class MinifyCache:
    """Minified sources by source hash, in `directory`, one file of text per source."""

    def __init__(self, directory: str, minimize_source, salt: str):
        self.directory = directory
        self._minimize_source = minimize_source
        self._salt = salt.encode()

    def minimize_source(self, source) -> str:
        data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else bytes(source)
        key = hashlib.sha256(b"\0".join((self._salt, b"minify", data))).hexdigest()
        with contextlib.suppress(UnicodeDecodeError):  # a damaged entry is minified again
            cached = disk_cache.read(self.directory, key)
            if cached:
                return cached.decode("utf-8")
        text = self._minimize_source(source)
        disk_cache.write(self.directory, key, text.encode("utf-8"))
        return text


def with_target_code_cache(original):
    """ansible_mitogen's ContextService._send_module_forwards, followed by the call that installs the compiled
    code cache (mitogen_target_code_cache) in the new context, before it imports anything else. A context that
    refuses it only goes without."""
    import mitogen.core

    source = Path(mitogen_target_code_cache.__file__).read_text(encoding="utf-8") + "\ninstall()\n"

    def send_module_forwards(self, context):
        original(self, context)
        try:
            context.call(exec, source, {"__name__": "fleetdeck_target_code_cache"})
        except mitogen.core.CallError as exc:
            display.vvv(f"no compiled code cache in {context.name}: {str(exc).splitlines()[0]}")

    return send_module_forwards


def list_collections_once(patch=setattr) -> None:
    """List the collection directories now, in the strategy's process, and make Mitogen's planner add this list
    to the search path of each collection module it runs. The planner would list them itself in every task
    worker that runs one, loading each collection's metadata again, since what it loads dies with the worker."""
    import ansible.collections.list
    import ansible_mitogen.planner

    found = tuple(path.decode("utf-8") for path in ansible.collections.list.list_collection_dirs())

    def load_collections(invocation):
        invocation._extra_sys_paths.update(found)

    patch(ansible_mitogen.planner, "_load_collections", load_collections)


def install(directory: str | None = None, patch=setattr) -> tuple[ImportCache, MinifyCache]:
    """Make Mitogen's import scans and minifying use the caches, and new contexts install theirs; `patch` is how
    the swaps are made (tests pass their own)."""
    import ansible_mitogen.module_finder
    import ansible_mitogen.services
    import mitogen
    import mitogen.imports
    import mitogen.master
    import mitogen.minify

    directory = directory or disk_cache.directory("mitogen")
    salt = f"python {sys.version_info[0]}.{sys.version_info[1]} mitogen {mitogen.__version__}"
    imports = ImportCache(directory, mitogen.imports.codeobj_imports, salt)
    minified = MinifyCache(directory, mitogen.minify.minimize_source, salt)
    patch(mitogen.imports, "codeobj_imports", imports.codeobj_imports)
    for module in (mitogen.master, ansible_mitogen.module_finder):
        patch(module, "compile", imports.compile)
    patch(mitogen.minify, "minimize_source", minified.minimize_source)
    service = ansible_mitogen.services.ContextService
    patch(service, "_send_module_forwards", with_target_code_cache(service._send_module_forwards))
    return imports, minified
