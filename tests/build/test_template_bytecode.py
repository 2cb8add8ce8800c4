"""The templates load compiled ahead of time (par.codegen.templating): the shipped bytecode is
current, rebuilt byte for byte, in use, renders as the templates compiled from their text, and
is not used for a template whose text changed."""

import marshal
import pickle
from pathlib import Path

import pytest
from jinja2 import DictLoader, Environment
from jinja2.bccache import Bucket, bc_magic

from par.codegen import templating
from par.codegen.artifacts import renderers
from par.codegen.templating import OPTIONS, Shipped, compiled_entries, environment, shipped
from par.dsl.compiler import compile_file

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(path.name for path in (ROOT / "templates").glob("*.jinja"))
STALE = "templates/templates.bytecode is stale: run python -m par.codegen.templating"


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_loads_from_the_shipped_bytecode(name):
    env = environment()
    cache = env.bytecode_cache
    assert isinstance(cache, Shipped)
    source, filename, _ = env.loader.get_source(env, name)
    assert cache.get_bucket(env, name, filename, source).code is not None, STALE


def test_the_bytecode_is_what_a_rebuild_makes():
    """Code object for code object (marshal's bytes depend on reference counts, not the code)."""
    env = environment()
    fresh = compiled_entries(env)
    on_disk = marshal.loads((ROOT / "templates" / templating.BYTECODE).read_bytes())
    assert sorted(on_disk) == sorted(fresh), STALE
    for key, data in fresh.items():
        assert _code(env, key, data) == _code(env, key, on_disk[key]), STALE


def _code(env, key: str, data: bytes):
    bucket = Bucket(env, key, pickle.loads(data[len(bc_magic) :]))  # the checksum it was made with
    bucket.bytecode_from_string(data)
    assert bucket.code is not None
    return bucket.code


def test_a_build_from_bytecode_is_the_build_from_the_templates_text(monkeypatch):
    compiled = compile_file(ROOT / "specs" / "baseline_tp8_pp2.par", ["layers=4", "batch=4"])
    assert environment().get_template("model.py.jinja").filename == "model.py.jinja"  # from the bytecode
    from_bytecode = _artifacts(compiled)
    plain = Environment(loader=environment().loader, **OPTIONS)
    monkeypatch.setattr(templating, "environment", lambda: plain)
    assert plain.get_template("model.py.jinja").filename != "model.py.jinja"  # compiled from its file
    assert _artifacts(compiled) == from_bytecode


def _artifacts(compiled) -> dict[str, object]:
    return {name: renderer(compiled) for name, renderer in renderers("none")}


def test_a_template_whose_text_changed_is_compiled_from_its_text():
    sources = {"t.jinja": "old {{ x }}"}
    env = Environment(loader=DictLoader(sources), bytecode_cache=Shipped({}), **OPTIONS)
    entries = compiled_entries(env)
    sources["t.jinja"] = "new {{ x }}"
    edited = Environment(loader=DictLoader(sources), bytecode_cache=Shipped(entries), **OPTIONS)
    assert edited.get_template("t.jinja").render(x=1) == "new 1"
    unchanged = Environment(loader=DictLoader({"t.jinja": "old {{ x }}"}), bytecode_cache=Shipped(entries), **OPTIONS)
    bucket = unchanged.bytecode_cache.get_bucket(unchanged, "t.jinja", None, "old {{ x }}")
    assert bucket.code is not None  # the same text: its entry is used


def test_no_bytecode_file_compiles_every_template(monkeypatch, tmp_path):
    monkeypatch.setattr(templating, "BYTECODE", "missing.bytecode")
    assert shipped().entries == {}
