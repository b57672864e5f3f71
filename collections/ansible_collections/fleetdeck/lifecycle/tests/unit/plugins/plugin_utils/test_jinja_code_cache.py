"""The compiled-template cache the mitogen_linear strategy installs: templates render the same through it, a
later process loads those from plain files without compiling, and nothing from a vault reaches the disk."""

from __future__ import annotations

import marshal

import jinja2
import pytest
from ansible._internal._datatag._tags import Origin, SourceWasEncrypted, VaultedValue
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.fleetdeck.lifecycle.plugins.plugin_utils import jinja_code_cache

TEMPLATES = ("{{ count + 1 }} of {{ names | join(',') | upper }}", "{% for n in names %}[{{ n }}]{% endfor %}",
             '{{ "c:\\new" }}')  # escape_backslashes applies here
EXPECTED = ["3 of A,B", "[a][b]", "c:\\new"]


@pytest.fixture
def plain_file(tmp_path):
    path = tmp_path / "tasks.yml"
    path.write_text("- name: a task\n")
    return path


def render(monkeypatch, directory, templates):
    """Each template rendered by Ansible with the cache installed on DIRECTORY, as in a new process."""
    with monkeypatch.context() as patched:
        jinja_code_cache.install(str(directory), patched.setattr)
        templar = Templar(loader=DataLoader(), variables={"count": 2, "names": ["a", "b"]})
        return [templar.template(trust_as_template(template)) for template in templates]


def from_file(path, templates=TEMPLATES):
    return [Origin(path=str(path), line_num=1).tag(template) for template in templates]


def no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the code is cached")

    monkeypatch.setattr(jinja2.Environment, "_parse", refuse)


def test_a_later_process_loads_templates_of_plain_files_without_compiling(tmp_path, monkeypatch, plain_file):
    cache = tmp_path / "cache"
    assert render(monkeypatch, cache, from_file(plain_file)) == EXPECTED
    assert len(list(cache.iterdir())) == len(TEMPLATES)
    assert (cache.stat().st_mode & 0o777) == 0o700
    no_compiling(monkeypatch)
    assert render(monkeypatch, cache, from_file(plain_file)) == EXPECTED


def test_templates_of_a_vault_stay_in_memory(tmp_path, monkeypatch, plain_file):
    encrypted = tmp_path / "vault.yml"
    encrypted.write_text("$ANSIBLE_VAULT;1.2;AES256;fleetdeck\n3061\n")
    secret = "{{ count }}:s3cret-in-the-text"
    templates = [*from_file(encrypted, [secret]), VaultedValue(ciphertext="x").tag(from_file(plain_file, [secret])[0]),
                 SourceWasEncrypted().tag(from_file(plain_file, [secret])[0]), secret]  # the last has no origin
    cache = tmp_path / "cache"
    assert render(monkeypatch, cache, templates) == ["2:s3cret-in-the-text"] * 4
    assert not cache.exists()


def test_a_damaged_entry_is_compiled_again_and_rewritten(tmp_path, monkeypatch, plain_file):
    cache = tmp_path / "cache"
    render(monkeypatch, cache, from_file(plain_file))
    entries = sorted(cache.iterdir())
    entries[0].write_bytes(b"not marshal")
    entries[1].write_bytes(b"")
    entries[2].write_bytes(marshal.dumps(1))  # not code
    assert render(monkeypatch, cache, from_file(plain_file)) == EXPECTED
    no_compiling(monkeypatch)
    assert render(monkeypatch, cache, from_file(plain_file)) == EXPECTED


def test_an_unwritable_directory_still_renders(tmp_path, monkeypatch, plain_file):
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert render(monkeypatch, blocked / "cache", from_file(plain_file)) == EXPECTED
    assert blocked.read_text() == ""


def test_other_settings_or_salt_are_other_entries(tmp_path, plain_file):
    calls = []

    def compile_source():
        calls.append(1)
        return compile("x = 1", "<template>", "exec")

    def code(cache, settings):
        return cache.code("{{ x }}", settings, str(plain_file), compile_source)

    first = jinja_code_cache.CodeCache(str(tmp_path / "cache"), salt="test")
    code(first, ("a",))
    code(first, ("a",))
    code(first, ("b",))
    code(jinja_code_cache.CodeCache(str(tmp_path / "cache"), salt="other"), ("a",))
    code(jinja_code_cache.CodeCache(str(tmp_path / "cache"), salt="test"), ("a",))
    assert len(calls) == 3
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_a_syntax_error_is_raised_and_not_cached(tmp_path, monkeypatch, plain_file):
    with pytest.raises(Exception, match="Syntax error in template"):
        render(monkeypatch, tmp_path / "cache", from_file(plain_file, ["{{ broken( }}"]))
    assert not (tmp_path / "cache").exists()
