"""After a syntax error the front end goes on at the next item: every problem of a file at once."""

import pytest

from par.dsl.compiler import compile_text
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.parser import MAX_SYNTAX_ERRORS, parse_spec, parse_text

MODEL = "model m : gpt { layers 4  hidden 64  heads 4  batch 8  seq 16 }\n"


def problems(text: str) -> list[tuple[int, str]]:
    """(line, message) of every diagnostic `par check` would print for `text`."""
    with pytest.raises(CompileError) as caught:
        compile_text(text, "t.par")
    return [(d.span.line, d.message) for d in caught.value.diagnostics]


def test_two_syntax_errors_in_different_items_are_both_reported():
    text = MODEL + "mesh { tp 2  pp }\nplace allgather afte qkv\n"
    found = problems(text)
    assert [line for line, _ in found] == [2, 3]
    assert "unexpected '}'" in found[0][1]
    assert "expected 'after'" in found[1][1]


def test_a_syntax_error_does_not_hide_a_semantic_error_in_another_item():
    text = "model m : gpt { layers 4  hidden 64  heads 4  batch 8  seq 16  vocab 0 }\nmesh { tp = }\n"
    found = problems(text)
    assert [line for line, _ in found] == [1, 2]
    assert found[0][1] == "vocab must be at least 1, not 0"
    assert found[1][1].startswith("unexpected '}'")


def test_items_after_a_broken_one_are_parsed_and_checked():
    text = "block b(x) { y = relu(x, }\n" + MODEL + "mesh { tp 3 }\n"
    parsed = parse_spec(text, "t.par")
    assert len(parsed.errors) == 1 and parsed.errors[0].span.line == 1
    assert [m.name for m in parsed.spec.models] == ["m"] and len(parsed.spec.meshes) == 1
    assert parsed.spec.broken == ("block",)
    found = problems(text)
    assert any(line == 3 and "heads (4) is not divisible by tp (3)" in message for line, message in found)


def test_a_missing_brace_resumes_at_the_item_it_ran_into():
    # The open model swallows `mesh` as a setting name; the mesh itself is fine and is kept.
    parsed = parse_spec("model m : gpt { layers 4\nmesh { tp 2 }\n", "t.par")
    (error,) = parsed.errors
    assert (error.span.line, error.span.col) == (2, 6)
    assert parsed.spec.models == () and len(parsed.spec.meshes) == 1
    assert parsed.spec.broken == ("model",)


def test_no_cascade_from_a_broken_model_or_block():
    # A broken model is not also "no model"; a broken block is not also "unknown block".
    found = problems("model m : gpt { layers 4  hidden 64  heads 4  batch 8  seq 16 ]\nmesh { tp 2 }\n")
    assert len(found) == 1 and found[0][1].startswith("unexpected ']'")
    found = problems("model m : b { layers 4  hidden 64  heads 4  batch 8  seq 16 }\nblock b(x) { return }\n")
    assert len(found) == 1 and found[0][0] == 2 and found[0][1].startswith("unexpected '}'")
    # An item dropped with the broken one, on its line, is not reported missing either.
    found = problems("mesh { tp = } " + MODEL)
    assert len(found) == 1 and found[0][1].startswith("unexpected '}'")
    # Text that starts like no item could have been the model.
    found = problems("modle m : gpt { layers 4 }\n")
    assert len(found) == 1 and found[0][1].startswith("unexpected 'modle'")


def test_a_keyword_used_as_a_name_inside_an_item_is_not_a_resume_point():
    # Line 3 starts with `mesh`, but as a statement target; resuming there would report it too.
    text = MODEL + "block b(x) {\n  mesh = relu(x)\n  y = add(mesh, }\n  return y\n}\n"
    found = problems(text)
    assert [line for line, _ in found] == [4]


def test_errors_after_a_resume_keep_their_lines_and_columns():
    text = "\n\nmesh { tp }\n  # comment\n\n  place allgather afte qkv\n"
    with pytest.raises(CompileError) as caught:
        parse_text(text, "t.par")
    assert [(d.span.line, d.span.col) for d in caught.value.diagnostics] == [(3, 11), (6, 19)]


def test_a_clean_parse_reports_nothing_broken():
    parsed = parse_spec(MODEL + "mesh { tp 2 }\n", "t.par")
    assert parsed.errors == () and parsed.spec.broken == ()


def test_a_file_of_nothing_but_errors_stops_after_a_bounded_number():
    parsed = parse_spec("mesh { tp = }\n" * (MAX_SYNTAX_ERRORS + 50), "t.par")
    assert len(parsed.errors) == MAX_SYNTAX_ERRORS + 1
    assert [d.span.line for d in parsed.errors[:-1]] == list(range(1, MAX_SYNTAX_ERRORS + 1))
    last = parsed.errors[-1]
    assert "stopped reading" in last.message and last.span.line == MAX_SYNTAX_ERRORS + 1
    assert None in parsed.spec.broken  # what was left unread may hold any item


def test_the_item_resumed_at_can_still_run_out_at_the_end_of_the_file():
    parsed = parse_spec("model m : gpt { layers 4\nmesh {", "t.par")
    assert [(d.span.line, d.span.col) for d in parsed.errors] == [(2, 6), (2, 7)]
    assert parsed.errors[1].message.startswith("unexpected end of file")
