import pytest

from dsl.check import check
from dsl.diagnostics import CompileError, format_all
from dsl.library import library_source
from dsl.parser import parse_text
from dsl.source import SourceFile

GPT_SMALL = "model m : gpt { layers 4  hidden 64  heads 4  ffn 256  batch 8  seq 16  dtype fp32 }\n"


def diagnostics_of(text: str, *, overrides=()):
    """Every diagnostic the front end reports for `text` (empty when it checks clean)."""
    try:
        check(parse_text(text, "t.par"), overrides)
    except CompileError as exc:
        return exc.diagnostics
    return []


def render(text: str, diagnostics) -> str:
    return format_all(diagnostics, {"t.par": SourceFile("t.par", text), library_source().name: library_source()})


@pytest.fixture
def errors_of():
    def run(text: str, overrides=()):
        return [d for d in diagnostics_of(text, overrides=overrides) if d.is_error]

    return run
