"""The built-in block library, shipped as .par source and parsed like any spec."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from par.dsl.frontend.parser import parse_text
from par.dsl.frontend.source import SourceFile
from par.dsl.frontend.spec import BlockDef

LIBRARY_NAME = "<library>/blocks.par"


@cache
def library_source() -> SourceFile:
    return SourceFile(LIBRARY_NAME, (files(__package__) / "blocks.par").read_text(encoding="utf-8"))


@cache
def library_blocks() -> tuple[BlockDef, ...]:
    """The built-in blocks, parsed once per process."""
    source = library_source()
    return parse_text(source.text, source.name).blocks
