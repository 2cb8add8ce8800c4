"""The grammar and the typed spec: what parses, into what, with which spans."""

import pytest
from lark.exceptions import GrammarError

from par.dsl.diagnostics import CompileError
from par.dsl.frontend import spec as ast
from par.dsl.frontend.parser import GRAMMAR, _lark, build_parser, parse_text


def test_grammar_is_strict_lalr():
    parser = _lark()
    assert parser.options.parser == "lalr"
    assert parser.options.strict


def test_strict_mode_rejects_a_conflict():
    # par's grammar with one ambiguous alternative added must fail when the parser is built.
    grammar = GRAMMAR.read_text(encoding="utf-8")
    ambiguous = grammar.replace('setting: NAME ["="] value [","]', 'setting: NAME ["="] value [","]\n       | NAME value value')
    assert ambiguous != grammar
    build_parser(grammar)
    with pytest.raises(GrammarError):
        build_parser(ambiguous)


def test_a_typical_spec_is_about_ten_lines():
    spec = parse_text(
        "# comment\n"
        "model gpt16 : gpt { layers 16  hidden 4096  heads 32  ffn 4 * hidden  batch 128  seq 10000  dtype fp16 }\n"
        "mesh { tp 8  pp 2  microbatches 4 }\n"
        "place allgather after qkv, fc1 as mlp\n",
        "s.par",
    )
    (model,) = spec.models
    assert model.name == "gpt16" and model.block == "gpt"
    assert [s.name for s in model.settings] == ["layers", "hidden", "heads", "ffn", "batch", "seq", "dtype"]
    ffn = model.settings[3].value
    assert isinstance(ffn, ast.BinOp) and ffn.op == "*"
    assert isinstance(ffn.right, ast.Ref) and ffn.right.name == "hidden"
    (place,) = spec.places
    assert place.kind == "allgather"
    assert [(t.after, t.alias) for t in place.targets] == [("qkv", None), ("fc1", "mlp")]


def test_spans_point_at_the_text():
    text = "model m : gpt {\n  layers 16\n  hidden = 64,\n}\n"
    spec = parse_text(text, "s.par")
    layers, hidden = spec.models[0].settings
    assert (layers.name_span.line, layers.name_span.col) == (2, 3)
    assert (layers.value.span.line, layers.value.span.col) == (2, 10)
    assert (hidden.value.span.line, hidden.value.span.col, hidden.value.span.end_col) == (3, 12, 14)
    assert str(hidden.span).startswith("s.par:3:3")


def test_mesh_items_in_any_order():
    spec = parse_text("mesh { sp  schedule gpipe  stages [0..1, 2..3]  tp 2  pp 2 }", "s.par")
    (mesh,) = spec.meshes
    assert mesh.sequence_parallel and mesh.schedule == "gpipe"
    assert [(s.first.value, s.last.value) for s in mesh.stages] == [(0, 1), (2, 3)]
    assert [s.name for s in mesh.settings] == ["tp", "pp"]


def test_schedule_1f1b_and_stage_counts():
    (mesh,) = parse_text("mesh { schedule 1f1b stages [3, 1] pp 2 }", "s.par").meshes
    assert mesh.schedule == "1f1b"
    assert [s.first.value for s in mesh.stages] == [3, 1] and all(s.last is None for s in mesh.stages)


def test_block_statements_and_hardware_forms():
    spec = parse_text(
        "block b(x) {\n y = linear(x, 2 * hidden, column)\n z = add(x, y)\n return z\n}\n"
        "hardware h100 { memory_gb 40 }\n",
        "s.par",
    )
    (block,) = spec.blocks
    assert block.param == "x" and block.result == "z"
    assert [(s.target, s.op, len(s.args)) for s in block.statements] == [("y", "linear", 3), ("z", "add", 2)]
    (hardware,) = spec.hardware
    assert hardware.profile == "h100" and hardware.settings[0].name == "memory_gb"


@pytest.mark.parametrize(
    "text, line, col, words",
    [
        ("model {", 1, 7, ["unexpected '{'", "a name"]),
        ("block b(x) { y = f(x) }", 1, 23, ["'return'"]),
        ("mesh { tp 8 ", 1, 12, ["end of file", "'}'"]),
        ("model m { a 1.2.3 }", 1, 16, ["unexpected character '.'"]),
        ("place allgather qkv", 1, 17, ["expected 'after'"]),
        ("\x00", 1, 1, ["U+0000"]),
    ],
)
def test_syntax_errors_are_located(text, line, col, words):
    with pytest.raises(CompileError) as caught:
        parse_text(text, "bad.par")
    (diag,) = caught.value.diagnostics
    assert (diag.span.file, diag.span.line, diag.span.col) == ("bad.par", line, col)
    for word in words:
        assert word in diag.message


def test_a_number_too_long_for_python_is_a_diagnostic():
    with pytest.raises(CompileError) as caught:
        parse_text("model m { layers 1" + "0" * 5000 + " }", "bad.par")
    assert "too long" in caught.value.diagnostics[0].message
