"""The built-in block library, shipped as .par source and parsed like any spec, or ahead of time
(`parsed.py`)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from par.dsl.frontend.source import SourceFile
from par.dsl.frontend.spec import BlockDef

LIBRARY_NAME = "<library>/blocks.par"


@cache
def library_source() -> SourceFile:
    return SourceFile(LIBRARY_NAME, (files(__package__) / "blocks.par").read_text(encoding="utf-8"))


@cache
def library_blocks() -> tuple[BlockDef, ...]:
    """The built-in blocks, parsed once per process, or ahead of time (blocks.parsed)."""
    from par.dsl.frontend.library import parsed

    shipped = parsed.load(parsed.key())
    return shipped if shipped is not None else parse_library()


def parse_library() -> tuple[BlockDef, ...]:
    from par.dsl.frontend.parser import parse_text  # here: the command line starts without lark

    source = library_source()
    return parse_text(source.text, source.name).blocks
