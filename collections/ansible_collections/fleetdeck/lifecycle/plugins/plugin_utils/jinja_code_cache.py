# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""ansible-core 2.19 compiles a Jinja template every time it renders one, and it renders in the worker it
forks for each host-task, so what a worker compiled dies with it: on an idempotent deploy that is about a
third of the workers' CPU. The cache below keeps the compiled code on disk (marshal), keyed by a hash of the
template's text and of everything that changes how Jinja compiles it, so later workers and runs load it.

The compiled code holds the template's literal text, and a template's text can hold a secret. So only
templates read from a plain file (their Origin tag names a file that is not vault-encrypted, and nothing
marks them as decrypted) go to disk; any other is cached in memory, for the process.

`install()` swaps AnsibleEnvironment.compile, the Jinja entry point every template string goes through."""

from __future__ import annotations

import hashlib
import marshal
import sys
import types

from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import disk_cache

VAULT_HEADER = b"$ANSIBLE_VAULT"


class CodeCache:
    """Compiled templates by hash: in memory for this process, in `directory` for later ones."""

    def __init__(self, directory: str, salt: str):
        self.directory = directory
        self._salt = salt
        self._memory: dict[str, types.CodeType] = {}
        self._plain_files: dict[str, bool] = {}

    def code(self, source: str, settings: tuple, origin_path: str | None, compile_source) -> types.CodeType:
        """The code of SOURCE compiled under SETTINGS, from the cache or from `compile_source()`."""
        parts = (repr((self._salt, settings)).encode(), source.encode("utf-8", "surrogateescape"))
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()
        code = self._memory.get(key)
        if code is None:
            persist = origin_path is not None and self._plain_file(origin_path)
            code = self._load(key) if persist else None
            if code is None:
                code = compile_source()
                if persist:
                    disk_cache.write(self.directory, key, marshal.dumps(code))
            self._memory[key] = code
        return code

    def _load(self, key: str) -> types.CodeType | None:
        data = disk_cache.read(self.directory, key)
        try:
            # As trusted as Python's own __pycache__: the directory is the user's and only theirs (0700).
            code = marshal.loads(data) if data else None  # noqa: S302
        except (EOFError, ValueError, TypeError):
            return None
        return code if isinstance(code, types.CodeType) else None

    def _plain_file(self, path: str) -> bool:
        plain = self._plain_files.get(path)
        if plain is None:
            try:
                with open(path, "rb") as file:
                    plain = not file.read(len(VAULT_HEADER)).startswith(VAULT_HEADER)
            except OSError:
                plain = False
            self._plain_files[path] = plain
        return plain


def install(directory: str | None = None, patch=setattr) -> CodeCache:
    """Make every template string Ansible compiles go through the cache; `patch` is how the swap is made."""
    import ansible.release
    import jinja2
    from ansible._internal._datatag._tags import Origin, SourceWasEncrypted, VaultedValue
    from ansible._internal._templating import _jinja_bits, _jinja_common

    versions = f"python {sys.version} jinja2 {jinja2.__version__} ansible-core {ansible.release.__version__}"
    cache = CodeCache(directory or disk_cache.directory("jinja-code"), salt=versions)
    original = _jinja_bits.AnsibleEnvironment.compile

    def compile_through_cache(environment, source, name=None, filename=None, raw=False, defer_init=False):
        if raw or not isinstance(source, str) or environment._debuggable_template_source:
            return original(environment, source, name, filename, raw, defer_init)
        context = _jinja_bits._TemplateCompileContext.current(optional=True)
        settings = (type(environment).__qualname__, name, filename, defer_init, context and context.escape_backslashes,
                    environment.optimized, tuple(sorted(environment.extensions)),
                    _jinja_common._TemplateConfig.allow_embedded_templates,
                    tuple(getattr(environment, field) for field in _jinja_bits._TEMPLATE_OVERRIDE_FIELD_NAMES))
        origin = Origin.get_tag(source)
        decrypted = VaultedValue.is_tagged_on(source) or SourceWasEncrypted.is_tagged_on(source)
        return cache.code(source, settings, None if decrypted or origin is None else origin.path,
                          lambda: original(environment, source, name, filename, raw, defer_init))

    patch(_jinja_bits.AnsibleEnvironment, "compile", compile_through_cache)
    return cache
