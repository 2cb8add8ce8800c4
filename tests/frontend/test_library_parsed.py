"""The block library loads parsed ahead of time (par.dsl.frontend.library.parsed): the shipped
file is current, rebuilt byte for byte, in use, the blocks a parse gives, and not used for a
library or parser that changed; it cannot name any class but the front end's syntax."""

import io
import os
import pickle
from pathlib import Path

import pytest

from par.dsl.frontend import library
from par.dsl.frontend.library import parse_library, parsed
from par.dsl.frontend.source import SourceFile

ROOT = Path(__file__).resolve().parents[2]
STALE = "dsl/frontend/library/blocks.parsed is stale: run python -m par.dsl.frontend.library.parsed"


def test_the_shipped_blocks_are_what_a_rebuild_makes():
    assert (ROOT / "dsl" / "frontend" / "library" / parsed.PARSED).read_bytes() == parsed.build(), STALE


def test_the_library_loads_from_the_shipped_file_as_parsed(monkeypatch):
    shipped = parsed.load(parsed.key())
    assert shipped is not None, STALE
    assert shipped == parse_library()
    library.library_blocks.cache_clear()
    monkeypatch.setattr(library, "parse_library", lambda: pytest.fail("parsed"))
    try:
        assert library.library_blocks() == shipped
    finally:
        library.library_blocks.cache_clear()


def test_blocks_made_from_another_library_or_parser_are_not_used(monkeypatch):
    shipped = parsed.key()
    text = parsed.library_source()
    monkeypatch.setattr(parsed, "library_source", lambda: SourceFile(text.name, text.text + "\n# edited\n"))
    edited = parsed.key()
    assert edited is not None and edited != shipped
    assert parsed.load(edited) is None  # the shipped blocks were made from the other library
    monkeypatch.undo()
    monkeypatch.setattr(parsed, "PARSERS", (*parsed.PARSERS, "missing.py"))
    assert parsed.key() is None  # a parser's source cannot be read: parse
    assert parsed.load(None) is None


def test_the_file_cannot_name_anything_but_syntax(monkeypatch, tmp_path):
    hostile = pickle.dumps({"key": parsed.key(), "blocks": os.getcwd}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="syntax only"):
        parsed._SyntaxOnly(io.BytesIO(hostile)).load()
    monkeypatch.setattr(parsed, "PARSED", "missing.parsed")
    assert parsed.load(parsed.key()) is None
