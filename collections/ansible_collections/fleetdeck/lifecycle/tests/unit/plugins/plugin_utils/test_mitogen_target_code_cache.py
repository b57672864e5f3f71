"""The compiled code cache on managed hosts: a later interpreter gets the same code without compiling, damaged
entries and unsafe directories only mean compiling, and the controller installs it in each new context."""

from __future__ import annotations

import builtins
import marshal
import pwd

import ansible_mitogen.runner
import mitogen.core
import pytest
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import mitogen_import_cache, mitogen_target_code_cache

SOURCE = "def answer(x):\n    return [x * 2, __name__]\n"


def refuse(*args, **kwargs):
    raise AssertionError("compiled although the code is cached")


def run(code):
    namespace = {"__name__": "sent"}
    exec(code, namespace)  # noqa: S102 - the code under test
    return namespace["answer"](21)


def cache(directory, original=builtins.compile):
    return mitogen_target_code_cache.CodeCache(str(directory), original)


def test_a_later_interpreter_gets_the_code_from_the_disk(tmp_path):
    first = cache(tmp_path).compile(SOURCE, "master:/x/mod.py", "exec", 0, True)
    assert run(first) == [42, "sent"]
    assert len(list(tmp_path.iterdir())) == 1
    again = cache(tmp_path, refuse).compile(SOURCE.encode(), "master:/x/mod.py", "exec", 0, True)
    assert run(again) == [42, "sent"] and again.co_filename == "master:/x/mod.py"


def test_other_names_and_flags_are_other_entries(tmp_path):
    code = cache(tmp_path)
    code.compile(SOURCE, "a.py", "exec", 0, True)
    code.compile(SOURCE, "b.py", "exec", 0, True)
    code.compile(SOURCE, "a.py", "exec", 0, False)
    assert len(list(tmp_path.iterdir())) == 3
    assert cache(tmp_path, refuse).compile(SOURCE, "b.py", "exec", 0, True).co_filename == "b.py"


DAMAGES = {"empty": lambda good: b"", "garbage": lambda good: b"\x00garbage", "not code": lambda good: marshal.dumps(1),
           "truncated": lambda good: good[:20]}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_entry_is_compiled_again_and_rewritten(tmp_path, damage):
    cache(tmp_path).compile(SOURCE, "a.py", "exec")
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(damage(entry.read_bytes()))
    assert run(cache(tmp_path).compile(SOURCE, "a.py", "exec")) == [42, "sent"]
    assert run(marshal.loads(entry.read_bytes())) == [42, "sent"]  # noqa: S302 - written by the test


def test_an_entry_naming_another_file_is_not_used(tmp_path):
    cache(tmp_path).compile(SOURCE, "a.py", "exec")
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(marshal.dumps(compile(SOURCE, "elsewhere.py", "exec")))
    assert cache(tmp_path).compile(SOURCE, "a.py", "exec").co_filename == "a.py"


def test_what_it_does_not_cache_is_compiled_as_asked(tmp_path):
    code = cache(tmp_path)
    assert code.compile("1 + 1", "x", "eval") is not None
    with pytest.raises(SyntaxError):
        code.compile("def broken(:\n", "broken.py", "exec")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", [0o770, 0o755])
def test_a_directory_others_can_enter_is_not_used(tmp_path, mode):
    directory = tmp_path / "shared"
    directory.mkdir(mode=mode)
    directory.chmod(mode)
    assert not mitogen_target_code_cache.usable(str(directory))
    assert mitogen_target_code_cache.install(str(directory)) is None


def test_a_file_in_the_way_is_not_used(tmp_path):
    (tmp_path / "file").write_text("")
    assert not mitogen_target_code_cache.usable(str(tmp_path / "file"))
    assert not mitogen_target_code_cache.usable(str(tmp_path / "file" / "below"))


def test_an_unwritable_directory_still_compiles(tmp_path, monkeypatch):
    def no_temp_files(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(mitogen_target_code_cache.tempfile, "mkstemp", no_temp_files)
    assert run(cache(tmp_path).compile(SOURCE, "a.py", "exec")) == [42, "sent"]
    assert not list(tmp_path.iterdir())


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The account's home directory (from the password database, not $HOME) is TMP_PATH; mitogen.core and
    ansible_mitogen.runner get back the builtin compile afterwards."""
    real = pwd.getpwuid
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: pwd.struct_passwd((*real(uid)[:5], str(tmp_path), "/bin/sh")))
    monkeypatch.setattr(mitogen.core, "compile", builtins.compile, raising=False)
    monkeypatch.setattr(ansible_mitogen.runner, "compile", builtins.compile, raising=False)
    return tmp_path


def test_install_makes_mitogen_compile_through_the_cache(home):
    cached = mitogen_target_code_cache.install()
    directory = home / ".cache" / "fleetdeck" / "mitogen-code"
    assert cached.directory == str(directory)
    assert (directory.stat().st_mode & 0o777) == 0o700
    for module in (mitogen.core, ansible_mitogen.runner):
        assert module.compile == cached.compile
    mitogen.core.compile(SOURCE, "mod.py", "exec", 0, True)
    assert len(list(directory.iterdir())) == 1


class Context:
    """Stands in for a Mitogen context: runs what the controller calls in it here."""

    name = "ssh.inst1"

    def __init__(self, fails=False):
        self.fails, self.calls = fails, []

    def call(self, fn, *args):
        self.calls.append(fn)
        if self.fails:
            raise mitogen.core.CallError("refused")
        return fn(*args)


def test_each_new_context_installs_the_cache_after_the_module_forwards(home):
    forwarded = []
    send = mitogen_import_cache.with_target_code_cache(lambda service, context: forwarded.append(context))
    context = Context()
    send(None, context)
    assert forwarded == [context] and context.calls == [exec]
    assert mitogen.core.compile.__self__.directory == str(home / ".cache" / "fleetdeck" / "mitogen-code")


def test_a_context_that_refuses_it_still_connects(home):
    forwarded = []
    send = mitogen_import_cache.with_target_code_cache(lambda service, context: forwarded.append(context))
    send(None, Context(fails=True))
    assert forwarded and mitogen.core.compile is builtins.compile
