"""Mixture-of-experts settings and mesh rules: each violation is one error at its setting, with
its factors and a fix; a block per range of layers must cover the layers in order."""

import pytest

from par.dsl.compiler import compile_text
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.format import format_spec
from par.dsl.frontend.parser import parse_with_comments

MODEL = "model m : mixtral {{ layers 4  hidden 64  heads 4  batch 8  seq 8  {moe} }}\n"
MOE = "experts 8  top_k 2"


def spec(moe=MOE, mesh="dp 4  ep 4"):
    return MODEL.format(moe=moe) + f"mesh {{ {mesh} }}\n"


def only_error(errors_of, text):
    (err,) = errors_of(text)
    return err


def test_a_valid_spec_checks_clean(errors_of):
    assert errors_of(spec()) == []


def test_experts_not_divisible_by_ep(errors_of):
    err = only_error(errors_of, spec(moe="experts 6  top_k 3", mesh="dp 4  ep 4"))
    assert err.message == "experts (6) is not divisible by ep (4): each rank of an expert-parallel group holds experts / ep whole experts"
    assert err.hint == "use ep 1, 2, 3 or 6"
    assert (err.span.line, err.span.col) == (2, 17)  # at `ep`'s value


def test_ep_must_divide_dp(errors_of):
    err = only_error(errors_of, spec(mesh="tp 2  dp 2  ep 4"))
    assert "ep (4) does not divide dp (2)" in err.message and "tp 2 × pp 1 × dp 2 = 4 devices" in err.message
    assert err.hint == "use ep 1 or 2, or dp 4 (8 devices)"


def test_top_k_more_than_experts(errors_of):
    err = only_error(errors_of, spec(moe="experts 4  top_k 8", mesh="dp 4  ep 4"))
    assert err.message.startswith("top_k (8) is more than experts (4)")
    assert err.hint == "use top_k 4 or fewer"


def test_expert_ffn_not_divisible_by_tp(errors_of):
    err = only_error(errors_of, spec(moe="experts 8  top_k 2  expert_ffn 30", mesh="tp 4  dp 2  ep 2"))
    assert err.message.startswith("expert_ffn (30) is not divisible by tp (4)")


def test_ep_on_a_model_without_experts(errors_of):
    text = "model m : llama { layers 2  hidden 64  heads 4  batch 8  seq 8 }\nmesh { dp 2  ep 2 }\n"
    err = only_error(errors_of, text)
    assert err.message == "ep is 2 but the model has no experts"


def test_moe_in_a_block_of_a_model_without_experts(errors_of):
    err = only_error(errors_of, spec(moe="", mesh="dp 1"))
    assert err.message == "moe needs a model with experts, and model m sets none"
    assert err.hint == "add `experts N  top_k K` to model m"


@pytest.mark.parametrize(
    ("moe", "message"),
    [
        ("experts 8", "a model with experts must set top_k: how many experts each token goes to"),
        ("top_k 2", "top_k is set but the model has no experts"),  # and the moe says why it needs them: below
        ("experts 8  top_k 2  router softmax", "router must be softmax_topk or topk_softmax, not softmax"),
        ("experts 8  top_k 2  router_norm maybe", "router_norm must be true or false, not maybe"),
        ("experts 8  top_k 2  capacity_factor 0.5", "capacity_factor must be from 1 (balanced routing) to 1000, not 0.5"),
        ("experts 0  top_k 2", "experts must be at least 1, not 0"),
        ("experts 8  top_k 2  router_aux_loss_coef -0.01", "router_aux_loss_coef must be from 0 (no auxiliary loss) to 1000, not -0.01"),
        ("experts 8  top_k 2  router_aux_loss_coef x", "router_aux_loss_coef is a number, not a name ('x')"),
        ("router_aux_loss_coef 0.01", "router_aux_loss_coef is set but the model has no experts"),
    ],
)
def test_expert_settings(errors_of, moe, message):
    assert message in [err.message for err in errors_of(spec(moe=moe, mesh="dp 1"))]


def test_overrides_reach_the_expert_settings(errors_of):
    assert errors_of(spec(), overrides=()) == []
    from par.dsl.frontend.inputs import parse_defines

    overrides, _ = parse_defines(["experts=2"])
    assert [err.message.split(":")[0] for err in errors_of(spec(), overrides=overrides)] == ["experts (2) is not divisible by ep (4)"]


def test_the_auxiliary_loss_setting_and_its_override():
    from par.dsl.checks.check import check
    from par.dsl.frontend.inputs import parse_defines
    from par.dsl.frontend.parser import parse_text

    deployment, _ = check(parse_text(spec(moe="experts 4  top_k 2  router_aux_loss_coef 0.01"), "t.par"))
    assert deployment.model.moe.router_aux_loss_coef == 0.01
    overrides, _ = parse_defines(["router_aux_loss_coef=0.5"])
    deployment, _ = check(parse_text(spec(moe="experts 4  top_k 2"), "t.par"), overrides)
    assert deployment.model.moe.router_aux_loss_coef == 0.5
    deployment, _ = check(parse_text(spec(moe="experts 4  top_k 2"), "t.par"))
    assert deployment.model.moe.router_aux_loss_coef == 0  # off unless set


def test_unbalanced_token_count_is_an_error_at_experts(errors_of):
    text = spec(moe="experts 8  top_k 1", mesh="dp 1").replace("batch 8  seq 8", "batch 1  seq 6")
    err = only_error(errors_of, text)
    assert err.message.startswith("a microbatch's 6 tokens × top_k (1) = 6 do not divide among experts (8)")
    assert err.hint.startswith("use experts 1, 2, 3 or 6, or a seq or batch")
    assert text.splitlines()[0][err.span.col - 1 :].startswith("8  top_k")  # at experts' value


def test_the_shape_rule_says_the_same_for_a_block_of_the_spec():
    """The shape rule behind the check: permute refuses tokens it cannot share out evenly."""
    from par.dsl.checks.deployment import Experts, Model, Op
    from par.dsl.frontend.source import Span
    from par.dsl.registry.moe import MOE_OPS
    from par.dsl.registry.ops import ShapeError

    permute = next(op for op in MOE_OPS if op.name == "permute")
    experts = Experts(8, 1, 16, 0, "softmax_topk", True, 1.0)
    model = Model("m", "b", 1, 64, 4, 4, 64, None, 1, 6, "fp32", moe=experts)
    op = Op("t", "permute", ("x", "r"), Span.point("t.par"))
    with pytest.raises(ShapeError, match="6 tokens × top_k 1 = 6 is not divisible by 8"):
        permute.shape(op, [(1, 6, 64), (1, 6, 8)], model)
    assert permute.shape(op, [(1, 8, 64), (1, 8, 8)], model) == (8, 1, 64)


LAYERED = """model m : llama 0..1, mixtral {second} {{ layers 4  hidden 64  heads 4  batch 8  seq 8  experts 8  top_k 2 }}
mesh {{ dp 2  ep 2 }}
"""


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("3..3", "the blocks must cover layers 0..3 in order; `mixtral 3..3` is not: the next range starts at layer 2"),
        ("2..2", "the blocks cover layers 0..2 but the model has 4 layers (0..3)"),
        ("1..3", "the blocks must cover layers 0..3 in order; `mixtral 1..3` is not: the next range starts at layer 2"),
    ],
)
def test_layer_ranges_cover_the_layers_in_order(errors_of, second, message):
    assert [err.message for err in errors_of(LAYERED.format(second=second))] == [message]


def test_layer_blocks_resolve_names_and_places(errors_of):
    assert errors_of(LAYERED.format(second="2..layers - 1")) == []
    (err,) = errors_of(LAYERED.format(second="2..3").replace("mixtral", "mixtrall"))
    assert err.message == "unknown block 'mixtrall'" and err.hint == "did you mean 'mixtral'?"
    placed = LAYERED.format(second="2..3") + "place allgather after moe_gate\n"
    assert errors_of(placed) == []  # the op of the MoE block only
    (err,) = errors_of(LAYERED.format(second="2..3") + "place allgather after nothing\n")
    assert err.message == "place: no block of the model has an op 'nothing'"


def format_text(text: str, file: str) -> str:
    spec, comments = parse_with_comments(text, file)
    return format_spec(spec, comments, text)


def test_fmt_keeps_a_block_per_range():
    text = LAYERED.format(second="2..layers-1")
    formatted = format_text(text, "t.par")
    assert formatted.startswith("model m : llama 0..1, mixtral 2..layers - 1 {")
    assert format_text(formatted, "t.par") == formatted


def test_expert_linear_takes_only_tokens_grouped_by_expert():
    text = """model m : b { layers 2  hidden 64  heads 4  batch 4  seq 8  experts 4  top_k 2 }
mesh { dp 2  ep 2 }
block b(x) {
  y = expert_linear(x, 64, column)
  out = add(x, y)
  return out
}
"""
    with pytest.raises(CompileError) as raised:
        compile_text(text, "t.par")
    (err,) = raised.value.diagnostics
    assert err.message == "expert_linear takes tokens grouped by expert, [experts (4), tokens, features] (from permute); 'x' is [2, 8, 64]"
    assert (err.span.line, err.span.col) == (4, 3)


def test_etp_defaults_to_tp_and_may_be_written_so(errors_of):
    assert errors_of(spec(mesh="tp 2  dp 4  ep 4  etp 2")) == []
    from par.dsl.frontend.inputs import parse_defines

    overrides, _ = parse_defines(["etp=2", "tp=2"])
    assert errors_of(spec(), overrides=overrides) == []


def test_etp_must_divide_tp(errors_of):
    err = only_error(errors_of, spec(mesh="tp 4  dp 2  ep 2  etp 3"))
    assert err.message.startswith("etp (3) does not divide tp (4)")
    assert err.hint == "use etp 4 (the divisors of tp are 1, 2, 4; par lowers etp = tp only, for now)"
    assert (err.span.line, err.span.col) == (2, 30)  # at `etp`'s value


def test_etp_below_tp_is_not_lowered_yet(errors_of):
    err = only_error(errors_of, spec(mesh="tp 4  dp 2  ep 2  etp 1"))
    assert err.message.startswith("etp (1) is below tp (4)")
    assert "tp / etp = 4 expert-parallel members, are not lowered yet" in err.message
    assert err.hint == "use etp 4, or leave etp out"


def test_etp_on_a_model_without_experts(errors_of):
    text = "model m : llama { layers 2  hidden 64  heads 4  batch 8  seq 8 }\nmesh { tp 2  etp 1 }\n"
    assert only_error(errors_of, text).message == "etp is 1 but the model has no experts"
