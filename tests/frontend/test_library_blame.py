"""A bad setting is one error at the user's own line; a built-in block that cannot use it is a note."""

import pytest

import par.dsl.checks.check
from par.dsl.checks.check import check
from par.dsl.diagnostics import CompileError, format_all
from par.dsl.frontend.library import LIBRARY_NAME, library_source
from par.dsl.frontend.parser import parse_text
from par.dsl.frontend.source import SourceFile


def spec(block: str, **settings) -> str:
    values = {"layers": 2, "hidden": 64, "heads": 4, "batch": 8, "seq": 16} | settings
    return f"model m : {block} {{ " + "  ".join(f"{k} {v}" for k, v in values.items()) + " }\n"


def errors(text: str, overrides=()):
    with pytest.raises(CompileError) as caught:
        check(parse_text(text, "t.par"), overrides)
    return [d for d in caught.value.diagnostics if d.is_error]


def column_of(text: str, needle: str) -> int:
    return text.index(needle) + 1


@pytest.mark.parametrize("block", ["gpt", "llama"])
@pytest.mark.parametrize("setting, value", [("hidden", 0), ("heads", 0), ("ffn", 0), ("hidden", 30_000_000), ("ffn", 0.5)])
def test_a_bad_setting_is_one_error_at_its_own_line(block, setting, value):
    text = spec(block, **{setting: value})
    (only,) = errors(text)
    assert only.span.file == "t.par"
    assert only.span.col == column_of(text, f"{setting} {value}") + len(setting) + 1
    assert only.message.startswith(setting)


def test_a_bad_override_is_one_error_on_the_command_line():
    from par.dsl.frontend.inputs import parse_defines

    overrides, _ = parse_defines(["hidden=0"])
    (only,) = errors(spec("gpt"), overrides)
    assert only.span.file == "<command line>"


def test_a_divisibility_a_built_in_block_needs_is_one_error_with_the_block_as_a_note():
    # llama sizes its QKV projection with head_dim = hidden / heads.
    text = spec("llama", hidden=66)
    (only,) = errors(text)
    assert (only.span.file, only.span.col) == ("t.par", column_of(text, "heads 4") + len("heads "))
    assert "not divisible by heads" in only.message
    (note,) = only.notes
    assert note.severity == "note" and note.span.file == LIBRARY_NAME
    library_line = library_source().line(note.span.line)
    assert "head_dim" in library_line[note.span.col - 1 : note.span.end_col - 1]


def test_the_users_line_is_printed_first_and_the_library_line_as_a_note():
    text = spec("llama", hidden=66)
    sources = {"t.par": SourceFile("t.par", text), LIBRARY_NAME: library_source()}
    headlines = [line for line in format_all(errors(text), sources).splitlines() if not line.startswith(" ")]
    assert len(headlines) == 2
    assert headlines[0].startswith("t.par:1:") and ": error: " in headlines[0]
    assert headlines[1].startswith(f"{LIBRARY_NAME}:") and ": note: " in headlines[1]


def test_a_built_in_size_that_fails_for_valid_settings_points_at_the_settings(monkeypatch):
    # No rule checks hidden against 3, so the block's own failure is what the user sees; twice
    # the same failure is still one error, with a note for each line of the block.
    library = parse_text("block thirds(x) {\n  a = linear(x, hidden / 3, column)\n  b = linear(a, hidden / 3, column)\n"
                         "  c = linear(b, hidden, row)\n  return c\n}\n", LIBRARY_NAME).blocks
    monkeypatch.setattr(par.dsl.checks.check, "library_blocks", lambda: library)
    text = spec("thirds")
    (only,) = errors(text)
    assert (only.span.file, only.span.col) == ("t.par", column_of(text, "hidden 64") + len("hidden "))
    assert "64 / 3 is not a whole number" in only.message and "thirds" in only.message
    assert [(n.span.file, n.span.line) for n in only.notes] == [(LIBRARY_NAME, 2), (LIBRARY_NAME, 3)]
