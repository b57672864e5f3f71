"""The caches the mitogen_linear strategy installs: Mitogen's import scans and minified sources are the same
with them, and a later run (new caches on the same directory) gets them without compiling or minifying."""

from __future__ import annotations

import builtins
import contextlib
import inspect
import json
import os
from pathlib import Path

import ansible.collections.list
import ansible.module_utils.basic
import ansible_mitogen.module_finder
import ansible_mitogen.planner
import mitogen.imports
import mitogen.master
import mitogen.minify
import mitogen.parent
import pytest
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import mitogen_import_cache

ORIGINAL_SCAN = mitogen.imports.codeobj_imports
ORIGINAL_MINIFY = mitogen.minify.minimize_source
MODULE_UTILS = Path(ansible.module_utils.basic.__file__).parent
SOURCES = ["basic.py", "urls.py", "common/text/converters.py", "facts/__init__.py"]  # relative imports too


def scans(cache):
    """What Mitogen reads from each source, through the cache."""
    return [list(cache.codeobj_imports(cache.compile((MODULE_UTILS / name).read_bytes(), name, "exec")))
            for name in SOURCES]


def uncached():
    return [list(ORIGINAL_SCAN(compile((MODULE_UTILS / name).read_bytes(), name, "exec"))) for name in SOURCES]


def new_cache(directory):
    return mitogen_import_cache.ImportCache(str(directory), ORIGINAL_SCAN, salt="test")


@contextlib.contextmanager
def no_compiling():
    """`compile` refuses inside the block only: pytest compiles its own report of a failure."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the answer is cached")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "compile", refuse)
        yield


def test_a_later_run_answers_from_the_disk_without_compiling(tmp_path):
    expected = uncached()
    assert scans(new_cache(tmp_path)) == expected
    assert len(list(tmp_path.iterdir())) == len(SOURCES)
    assert (tmp_path.stat().st_mode & 0o777) == 0o700
    with no_compiling():
        again = scans(new_cache(tmp_path))
    assert again == expected


def test_a_damaged_entry_is_compiled_again_and_rewritten(tmp_path):
    expected = uncached()
    scans(new_cache(tmp_path))
    entries = sorted(tmp_path.iterdir())
    entries[0].write_text("not json")
    entries[1].write_text(json.dumps([["x", 1, []]]))
    entries[2].write_text("")
    assert scans(new_cache(tmp_path)) == expected
    assert all(json.loads(entry.read_text()) for entry in entries[:3])


def test_an_unwritable_directory_still_answers(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    cache = new_cache(blocked / "cache")  # under a file: cannot be made
    assert scans(cache) == uncached()
    assert scans(cache) == uncached()  # from memory
    assert blocked.read_text() == ""
    assert list(tmp_path.iterdir()) == [blocked]


def test_another_source_or_salt_is_another_entry(tmp_path):
    source = b"import os\nfrom . import sibling\n"
    first = new_cache(tmp_path).compile(source, "a.py", "exec")
    new_cache(tmp_path).compile(source + b"import json\n", "a.py", "exec")
    mitogen_import_cache.ImportCache(str(tmp_path), ORIGINAL_SCAN, salt="other").compile(source, "a.py", "exec")
    assert len(list(tmp_path.iterdir())) == 3
    assert list(new_cache(tmp_path).codeobj_imports(first)) == list(ORIGINAL_SCAN(compile(source, "a.py", "exec")))


def test_a_syntax_error_is_raised_by_the_compile(tmp_path):
    with pytest.raises(SyntaxError):
        new_cache(tmp_path).compile(b"def broken(:\n", "broken.py", "exec")
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_reads_minified_sources_from_the_disk(tmp_path):
    sources = [Path(mitogen.master.__file__).read_bytes(), inspect.getsource(mitogen.parent)]  # as Mitogen passes them
    expected = [ORIGINAL_MINIFY(source) for source in sources]
    assert [mitogen_import_cache.MinifyCache(str(tmp_path), ORIGINAL_MINIFY, "test").minimize_source(source)
            for source in sources] == expected
    entries = sorted(tmp_path.iterdir())
    assert len(entries) == 2

    def refuse(source):
        raise AssertionError("minified although the text is cached")

    assert [mitogen_import_cache.MinifyCache(str(tmp_path), refuse, "test").minimize_source(source)
            for source in sources] == expected
    entries[0].write_bytes(b"\xff\xfe not utf-8")
    entries[1].write_bytes(b"")
    assert [mitogen_import_cache.MinifyCache(str(tmp_path), ORIGINAL_MINIFY, "test").minimize_source(source)
            for source in sources] == expected
    assert sorted(entry.read_text() for entry in entries) == sorted(expected)


def test_installed_mitogen_finds_the_same_modules_and_a_later_run_compiles_nothing(tmp_path, monkeypatch):
    """Both of Mitogen's scans (the module_utils an Ansible module needs, and what a module sent to a host
    imports) and its minifying."""
    command = os.path.join(os.path.dirname(ansible.__file__), "modules", "command.py")
    search_path = [str(MODULE_UTILS)]

    def mitogen_scans():
        return (ansible_mitogen.module_finder.scan("ansible.modules.command", command, search_path),
                mitogen.master.ModuleFinder().find_related("ansible.module_utils.basic"),
                mitogen.master.ModuleFinder().find_related_imports("ansible_mitogen.target"),
                mitogen.master._get_core_source())  # minified, as sent to each new host

    expected = mitogen_scans()
    assert all(expected)

    def patch(target, name, value):  # `compile` is a builtin the modules do not define: undone by deleting it
        monkeypatch.setattr(target, name, value, raising=False)

    mitogen_import_cache.install(str(tmp_path), patch)
    assert mitogen_scans() == expected
    assert list(tmp_path.iterdir())
    mitogen_import_cache.install(str(tmp_path), patch)  # as the next run would
    monkeypatch.setattr(mitogen.minify, "strip_comments", None)  # what minifying calls first
    with no_compiling():
        again = mitogen_scans()
    assert again == expected


def test_the_planner_adds_the_collections_listed_once_before_the_workers_fork(monkeypatch):
    class Invocation:
        def __init__(self):
            self._extra_sys_paths = set()

    by_mitogen = Invocation()
    ansible_mitogen.planner._load_collections(by_mitogen)
    assert any(path.endswith("/fleetdeck/lifecycle") for path in by_mitogen._extra_sys_paths)
    listings = []
    real = ansible.collections.list.list_collection_dirs
    monkeypatch.setattr(ansible.collections.list, "list_collection_dirs", lambda: listings.append(1) or real())

    mitogen_import_cache.list_collections_once(monkeypatch.setattr)
    modules = [Invocation(), Invocation()]
    for invocation in modules:  # as two collection modules of the play would
        ansible_mitogen.planner._load_collections(invocation)
    assert listings == [1]
    assert [invocation._extra_sys_paths for invocation in modules] == [by_mitogen._extra_sys_paths] * 2
