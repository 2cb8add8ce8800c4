"""The built-in block library, shipped as .par source and parsed like any spec."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from ..source import SourceFile

LIBRARY_NAME = "<library>/blocks.par"


@cache
def library_source() -> SourceFile:
    return SourceFile(LIBRARY_NAME, (files(__package__) / "blocks.par").read_text(encoding="utf-8"))
