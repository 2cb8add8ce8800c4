"""Placement inference: which collectives appear, why, and what is an error."""

import pytest

from par.dsl.diagnostics import CompileError

MODEL = "model m : {block} {{ layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }}\n"


def program_ops(compiled):
    return [(s.name, s.op, str(s.in_placement), str(s.out_placement)) for s in compiled.program.steps]


def errors(compile_spec, text, *defines):
    with pytest.raises(CompileError) as caught:
        compile_spec(text, *defines)
    return [d for d in caught.value.diagnostics if d.is_error]


def test_megatron_plan(compile_spec):
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 2 }")
    assert program_ops(compiled) == [
        ("ln1", "layernorm", "R", "R"),
        ("qkv", "linear", "R", "S(-1)"),
        ("ctx", "attention", "S(-1)", "S(-1)"),
        ("attn", "linear", "S(-1)", "P"),
        ("allreduce_attn", "allreduce", "P", "R"),
        ("h", "add", "R", "R"),
        ("ln2", "layernorm", "R", "R"),
        ("fc1", "linear", "R", "S(-1)"),
        ("act", "gelu", "S(-1)", "S(-1)"),
        ("mlp", "linear", "S(-1)", "P"),
        ("allreduce_mlp", "allreduce", "P", "R"),
        ("out", "add", "R", "R"),
    ]


def test_strict_mode_names_each_missing_collective(compile_spec):
    found = errors(compile_spec, MODEL.format(block="gpt") + "mesh { tp 2 }\nstrict\n")
    assert [(d.span.line, d.hint) for d in found] == [
        (11, "write `place allreduce after attn`"),
        (16, "write `place allreduce after mlp`"),
    ]
    assert all("strict:" in d.message and "AllReduce" in d.message for d in found)


def test_strict_mode_passes_when_every_collective_is_written(compile_spec):
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 2 }\nstrict\nplace allreduce after attn, mlp\n")
    assert all(not s.inserted for s in compiled.program.collectives)


def test_strict_mode_under_sequence_parallelism_asks_for_the_sp_collectives(compile_spec):
    found = errors(compile_spec, MODEL.format(block="gpt") + "mesh { tp 2  sp }\nstrict\n")
    hints = sorted(d.hint for d in found)
    assert hints == [
        "write `place allgather after ln1`",
        "write `place allgather after ln2`",
        "write `place reducescatter after attn`",
        "write `place reducescatter after mlp`",
    ]
    text = MODEL.format(block="gpt") + "mesh { tp 2  sp }\nstrict\nplace allgather after ln1, ln2\nplace reducescatter after attn, mlp\n"
    assert compile_spec(text).graph


def test_a_written_collective_that_does_not_fit_is_an_error_at_its_place(compile_spec):
    text = MODEL.format(block="gpt") + "mesh { tp 2 }\nplace allreduce after qkv\nplace allgather after attn\n"
    found = errors(compile_spec, text)
    assert [(d.span.line, d.span.col) for d in found] == [(3, 23), (4, 23)]
    assert "allreduce of 'qkv' needs a partial sum (P), but qkv is split along features (S(-1))" in found[0].message
    assert "allgather of 'attn' needs a split tensor (S), but attn is a partial sum (P)" in found[1].message


def test_an_allreduce_of_a_replicated_tensor_is_an_error(compile_spec):
    found = errors(compile_spec, MODEL.format(block="gpt") + "mesh { tp 2 }\nplace allreduce after ln1\n")
    assert "already replicated" in found[0].hint


def custom(body: str) -> str:
    return MODEL.format(block="mine") + "mesh { tp 2 }\nblock mine(x) {\n" + body + "\n  return y\n}\n"


def test_a_nonlinear_op_on_a_partial_sum_gets_an_allreduce_first(compile_spec):
    body = "  a = linear(x, 64, column)\n  p = linear(a, 32, row)\n  y = gelu(p)"
    steps = program_ops(compile_spec(custom(body)))
    assert ("allreduce_p", "allreduce", "P", "R") in steps
    assert steps[-1] == ("y", "gelu", "R", "R")


def test_a_value_used_twice_is_converted_once(compile_spec):
    body = "  a = linear(x, 64, column)\n  p = linear(a, 32, row)\n  q = gelu(p)\n  r = silu(p)\n  y = add(q, r)"
    steps = program_ops(compile_spec(custom(body)))
    assert [s for s in steps if s[1] == "allreduce"] == [("allreduce_p", "allreduce", "P", "R")]


def test_a_value_added_to_itself(compile_spec):
    compiled = compile_spec(custom("  a = linear(x, 32, replicated)\n  y = add(a, a)"))
    edge = compiled.graph.edges["layer_0_a_gpu1", "layer_0_y_gpu1"]
    assert edge["operands"] == (0, 1)


def test_alltoall_written_in_a_block(compile_spec):
    body = "  a = linear(x, 32, column)\n  b = alltoall(a, seq)\n  c = gelu(b)\n  d = alltoall(c, hidden)\n  y = linear(d, 32, row)"
    compiled = compile_spec(custom(body))
    ops = program_ops(compiled)
    assert ("alltoall_b", "alltoall", "S(-1)", "S(seq)") in ops and ("alltoall_d", "alltoall", "S(seq)", "S(-1)") in ops
    node = compiled.graph.nodes["layer_0_alltoall_b"]
    assert node["wire_bytes"] * 2**2 == (2 - 1) * (4 * 8 * 32 * 4)  # (n−1)/n² · T, n = 2, T = b·s·f·4


def test_a_split_that_does_not_divide_is_an_error(compile_spec):
    found = errors(compile_spec, custom("  a = linear(x, 33, column)\n  y = linear(a, 32, row)"))
    assert any("'a' is split along features across tp (2) ranks, but its features (33)" in d.message for d in found)


def test_tp1_has_no_collectives(compile_spec):
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 1  pp 2 }\nplace allgather after qkv\n")
    assert compiled.program.collectives == ()
    assert all(s.kind == "compute" for s in compiled.program.steps)


def test_every_inserted_collective_says_why(shipped):
    graph = shipped("llama_gqa").graph
    for node, data in graph.nodes(data=True):
        if data["kind"] == "comm":
            assert data["reason"], node
            assert data["src"].count(":") >= 2
