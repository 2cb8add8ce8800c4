"""The registry (par.dsl.registry): every table keyed by op or collective names agrees with it,
its derived views agree with each other and with docs/cost.md's table, and adding an op is one declaration."""

import re
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from par.codegen.dot.style import LOOKS
from par.codegen.pytorch.ops import ELEMENTWISE, NORM_PARAMETERS, NORMS, REFERENCE_EXPERTS
from par.dsl.cost.accounting import KINDS
from par.dsl.lowering.backward import PAIRS
from par.dsl.lowering.placement import S_LAST, S_SEQ, P, R
from par.dsl.registry import statements
from par.dsl.registry.collectives import COLLECTIVES, conversion
from par.dsl.registry.ops import (
    OPS,
    OpSpec,
    Syntax,
    elements,
    per_element,
    same_placement,
    same_shape,
)
from par.lint.classify import COLLECTIVE_TITLES, collective_named

PLACEMENTS = (R, P, S_SEQ, S_LAST)
# The ops whose PyTorch code the layer writers build themselves (modules, head arithmetic).
HAND_WRITTEN = {"linear", "attention", "rope", "expert_linear"}


def torch_mismatch(ops, elementwise, norms) -> set[str]:
    """Op names that the registry has and the PyTorch emitter does not, or the other way
    (the mixture-of-experts ops Reference writes densely count as had)."""
    return set(ops) ^ (set(elementwise) | set(norms) | HAND_WRITTEN | set(REFERENCE_EXPERTS))


def look_mismatch(collectives, looks) -> set[str]:
    """Communications (DAG kind comm) without a look in the drawing, and looks of nothing."""
    return {name for name, spec in collectives.items() if spec.kind == "comm"} ^ set(looks)


def lint_mismatch(collectives, titles) -> set[str]:
    """Collectives lint looks for whose name lint does not title, or titles differently."""
    return {
        name for name, spec in collectives.items() if spec.lint_title is not None and titles.get(name) != spec.lint_title
    }


# -- emitter-side tables are keyed by the registry's names --------------------------------------------


def test_the_pytorch_expressions_cover_exactly_the_registry_ops():
    assert not torch_mismatch(OPS, ELEMENTWISE, NORMS)
    assert set(NORMS) == set(NORM_PARAMETERS)


def test_the_drawing_has_a_look_for_exactly_the_communications():
    assert not look_mismatch(COLLECTIVES, LOOKS)


def test_lint_titles_and_recognises_every_collective_par_draws():
    assert not lint_mismatch(COLLECTIVES, COLLECTIVE_TITLES)
    for name, spec in COLLECTIVES.items():
        if spec.lint_pattern is not None:
            # what par's own drawings and findings call it reads back as the same collective
            assert collective_named(spec.title) == name
            assert collective_named(spec.lint_title) == name


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_an_elementwise_expression_takes_the_ops_operands(op):
    assert len(set(re.findall(r"\{(\d+)\}", ELEMENTWISE[op]))) == OPS[op].syntax.tensors


@pytest.mark.parametrize("op", sorted(NORMS))
def test_a_norms_torch_parameters_are_the_parameters_the_registry_counts(op):
    features = 24
    assert OPS[op].params((2, 3, features), (2, 3, features)) == len(NORM_PARAMETERS[op]) * features


# -- a missing entry is caught ---------------------------------------------------------------------------


def test_an_op_without_a_torch_expression_is_caught():
    dropout = replace(OPS["gelu"], name="dropout")
    assert torch_mismatch(OPS | {"dropout": dropout}, ELEMENTWISE, NORMS) == {"dropout"}
    assert torch_mismatch(OPS, {k: v for k, v in ELEMENTWISE.items() if k != "silu"}, NORMS) == {"silu"}


def test_a_collective_without_a_look_or_a_lint_title_is_caught():
    broadcast = replace(COLLECTIVES["allgather"], name="broadcast2", lint_title="Broadcast2")
    assert look_mismatch(COLLECTIVES | {"broadcast2": broadcast}, LOOKS) == {"broadcast2"}
    assert look_mismatch(COLLECTIVES, {k: v for k, v in LOOKS.items() if k != "recv"}) == {"recv"}
    assert lint_mismatch(COLLECTIVES | {"broadcast2": broadcast}, COLLECTIVE_TITLES) == {"broadcast2"}


# -- the derived views agree -----------------------------------------------------------------------------


def test_the_statements_are_the_ops_then_the_written_collectives():
    assert list(statements.STATEMENTS) == list(OPS) + list(statements.FORMS) + list(statements.WRITTEN)
    assert statements.WRITTEN == ("allgather", "allreduce", "reducescatter", "alltoall", "dispatch", "combine")


@pytest.mark.parametrize("name", sorted(OPS) + list(statements.WRITTEN))
def test_every_signature_has_the_ops_arity_and_its_variants_are_its_choices(name):
    syntax = statements.STATEMENTS[name]
    table = OPS[name].signatures if name in OPS else COLLECTIVES[name].written.signatures
    variants = [variant for variant in table if variant is not None]
    assert bool(variants) == any(kind in ("style", "dim") for kind in syntax.extras)
    assert statements.choices(name) == tuple(variants)
    for signature in (s for found in table.values() for s in found):
        assert len(signature.inputs) == syntax.tensors


@pytest.mark.parametrize("name", statements.WRITTEN)
def test_a_written_collective_converts_what_its_declaration_says(name):
    spec = COLLECTIVES[name]
    for signature in (s for found in spec.written.signatures.values() for s in found):
        assert conversion(signature.inputs[0], signature.output) is spec


def test_conversions_follow_design_md():
    # from -> to: docs/cost.md's table; S -> P is illegal; equal placements need nothing
    expected = {
        (P, R): "allreduce", (P, S_SEQ): "reducescatter", (P, S_LAST): "reducescatter",
        (S_SEQ, R): "allgather", (S_LAST, R): "allgather",
        (S_SEQ, S_LAST): "alltoall", (S_LAST, S_SEQ): "alltoall",
        (R, S_SEQ): "slice", (R, S_LAST): "slice",
    }
    for source in PLACEMENTS:
        for target in PLACEMENTS:
            found = conversion(source, target)
            assert (found.name if found else None) == expected.get((source, target))


@given(st.integers(2, 64))
def test_wire_fractions_and_ring_steps_follow_design_md(n):
    wire = {name: spec.wire_fraction(n) for name, spec in COLLECTIVES.items()}
    assert wire["allreduce"] == Fraction(2 * (n - 1), n)
    assert wire["allgather"] == wire["reducescatter"] == Fraction(n - 1, n)
    assert wire["alltoall"] == Fraction(n - 1, n * n)
    assert wire["slice"] == wire["recv"] == 0
    for name in ("allreduce", "allgather", "reducescatter", "alltoall"):
        # a ring: every step sends one rank's share of what each rank holds
        chunk = Fraction(1, n * n) if name == "alltoall" else Fraction(1, n)
        assert wire[name] == COLLECTIVES[name].ring_steps(n) * chunk


def test_the_traffic_kinds_are_the_communications_that_send():
    assert KINDS == ("allgather", "allreduce", "reducescatter", "alltoall", "dispatch", "combine", "send")
    assert all(COLLECTIVES[kind].ring_steps(4) > 0 for kind in KINDS)


def test_the_pairs_are_the_declared_ones_and_carry_their_collective():
    declared = [p for spec in COLLECTIVES.values() for p in (spec.pair, spec.partial_pair) if p is not None]
    assert set(PAIRS) == {p.function for p in declared} | {"copy_to_tp"}
    for spec in COLLECTIVES.values():
        for pair in (spec.pair, spec.partial_pair):
            if pair is not None:
                assert PAIRS[pair.function].forward == (spec.name if spec.kind == "comm" else None)
    # a backward issues only collectives that send, on the same group
    assert {p.backward for p in PAIRS.values()} - {None} <= {k for k in KINDS if COLLECTIVES[k].group in ("tp", "ep")}
    for spec in COLLECTIVES.values():
        if spec.pair is not None and spec.pair.backward is not None and spec.kind == "comm":
            assert COLLECTIVES[spec.pair.backward].group == spec.group


def test_a_gathers_backward_undoes_it_and_a_scatters_gathers():
    # the forward/backward duals of docs/pytorch.md: AllGather <-> ReduceScatter
    assert COLLECTIVES["reducescatter"].pair.backward == "allgather"
    assert COLLECTIVES["allgather"].partial_pair.backward == "reducescatter"
    assert COLLECTIVES["slice"].pair.backward == "allgather"


@st.composite
def sharded_shapes(draw):
    n = draw(st.sampled_from([2, 4, 8]))
    batch, seq, features = (draw(st.integers(1, 4)), n * draw(st.integers(1, 4)), n * draw(st.integers(1, 6)))
    return n, (batch, seq, features), draw(st.integers(1, 6)) * n


@given(sharded_shapes())
def test_sharded_work_adds_up_to_the_whole(case):
    """Where an op's signature splits a tensor (an input or the output), the FLOPs of the n
    ranks' shards add up to the op's FLOPs on the whole tensor."""
    n, shape, out_features = case
    for name, spec in OPS.items():
        out_shape = shape[:-1] + (out_features,) if name == "linear" else shape
        for signature in (s for found in spec.signatures.values() for s in found):
            if all(p.kind != "S" for p in (*signature.inputs, signature.output)):
                continue
            local_in = signature.inputs[0].local_shape(shape, n)
            local_out = signature.output.local_shape(out_shape, n)
            assert n * spec.flops(local_in, local_out) == spec.flops(shape, out_shape), (name, signature)


# -- adding an op is one declaration (docs/architecture.md) -----------------------------------------------


DROPOUT = OpSpec(
    "dropout",
    Syntax(1, usage="dropout(x)"),
    same_placement(R, S_SEQ, S_LAST, arity=1),  # elementwise, and a partial sum is not
    same_shape,
    per_element(1),
)


def test_one_declaration_adds_an_op_to_the_compiler(monkeypatch, compile_spec):
    monkeypatch.setitem(OPS, "dropout", DROPOUT)
    monkeypatch.setitem(statements.STATEMENTS, "dropout", DROPOUT.syntax)  # the view, built at import
    text = (
        "model m : mine { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
        "mesh { tp 2 }\n"
        "block mine(x) {\n"
        "  up = linear(x, 64, column)\n  d = dropout(up)\n  down = linear(d, 32, row)\n  y = add(x, down)\n"
        "  return y\n}\n"
    )
    graph = compile_spec(text).graph
    node = graph.nodes["layer_0_d_gpu1"]
    assert (node["op"], node["in_placement"], node["out_placement"]) == ("dropout", "S(-1)", "S(-1)")
    assert node["flops"] == elements(node["out_shape"]) == 4 * 8 * 32


def test_what_an_op_keeps_names_its_own_operands():
    """`saves.operands` index the op's tensor operands (a collective and a send take one)."""
    for name, spec in OPS.items():
        assert all(0 <= index < spec.syntax.tensors for index in spec.saves.operands), name
    for name, spec in COLLECTIVES.items():
        assert all(index == 0 for index in spec.saves.operands), name
