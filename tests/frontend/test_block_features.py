"""The settings and block statements real models need: `norm_eps`, the rope settings, linear
biases and `rope(qkv)`, each accepted where it fits and reported at its own line where it does not."""

import pytest

from par.dsl.checks.check import check
from par.dsl.compiler import compile_text
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text

SIZES = "layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  batch 4  seq 8"


def spec(block: str = "llama", settings: str = "", mesh: str = "mesh { tp 2 }") -> str:
    return f"model m : {block} {{ {SIZES}  {settings} }}\n{mesh}\n"


def deployment(text: str, *defines: str):
    overrides, _ = parse_defines(list(defines))
    return check(parse_text(text, "t.par"), overrides)[0]


def errors(text: str, *defines: str) -> list:
    overrides, _ = parse_defines(list(defines))
    with pytest.raises(CompileError) as caught:
        compile_text(text, "t.par", overrides)
    return [d for d in caught.value.diagnostics if d.is_error]


def where(text: str, diagnostic) -> str:
    """The text the diagnostic's span starts at."""
    line = text.splitlines()[diagnostic.span.line - 1]
    return line[diagnostic.span.col - 1 :]


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_are_transformers_llama():
    model = deployment(spec()).model
    assert model.norm_eps == 1e-5
    assert (model.rope.theta, model.rope.scaling) == (10000.0, "none")


def test_llama3_settings_are_read_and_overridable():
    text = spec(settings=(
        "norm_eps 1e-6  rope_theta 500000  rope_scaling llama3  rope_factor 8  rope_low_freq_factor 1  "
        "rope_high_freq_factor 4  rope_original_max_positions 8192"
    ))
    model = deployment(text).model
    assert model.norm_eps == 1e-6
    assert (model.rope.theta, model.rope.scaling, model.rope.factor) == (500000.0, "llama3", 8.0)
    assert (model.rope.low_freq_factor, model.rope.high_freq_factor, model.rope.original_max_positions) == (1.0, 4.0, 8192)
    overridden = deployment(text, "norm_eps=1e-5", "rope_theta=1e4", "rope_factor=2").model
    assert (overridden.norm_eps, overridden.rope.theta, overridden.rope.factor) == (1e-5, 1e4, 2.0)


def test_switching_the_scaling_reports_the_numbers_it_does_not_read():
    text = spec(settings="rope_scaling llama3  rope_factor 8  rope_low_freq_factor 1  rope_high_freq_factor 4  rope_original_max_positions 64")
    found = errors(text, "rope_scaling=linear")
    assert sorted(d.message for d in found) == [
        "rope_high_freq_factor applies to rope_scaling llama3; rope_scaling is linear",
        "rope_low_freq_factor applies to rope_scaling llama3; rope_scaling is linear",
        "rope_original_max_positions applies to rope_scaling llama3; rope_scaling is linear",
    ]
    assert deployment(spec(settings="rope_scaling linear  rope_factor 2")).model.rope.factor == 2.0


def test_an_unknown_scaling_kind_is_an_error_at_its_value():
    text = spec(settings="rope_scaling yarn")
    (err,) = errors(text)
    assert err.message == "rope_scaling must be one of none, linear, llama3, not yarn"
    assert where(text, err).startswith("yarn")


def test_a_scaling_needs_its_numbers():
    text = spec(settings="rope_scaling llama3  rope_factor 8")
    (err,) = errors(text)
    assert err.message == "rope_scaling llama3 needs rope_low_freq_factor, rope_high_freq_factor, rope_original_max_positions"
    assert where(text, err).startswith("llama3")


def test_a_scaling_number_without_its_scaling_is_an_error_at_it():
    text = spec(settings="rope_factor 8")
    (err,) = errors(text)
    assert err.message == "rope_factor applies to rope_scaling linear or llama3; rope_scaling is none"
    assert where(text, err).startswith("8")


def test_llama3_bands_must_be_ordered():
    text = spec(settings="rope_scaling llama3  rope_factor 8  rope_low_freq_factor 4  rope_high_freq_factor 1  rope_original_max_positions 64")
    (err,) = errors(text)
    assert "rope_high_freq_factor (1) must be above rope_low_freq_factor (4)" in err.message


@pytest.mark.parametrize(
    "settings, message",
    [
        ("norm_eps 0", "norm_eps must be positive, not 0"),
        ("norm_eps 2", "norm_eps (2) must be below 1"),
        ("rope_theta -5", "rope_theta must be positive, not -5"),
        ("rope_scaling linear  rope_factor 0", "rope_factor must be positive, not 0"),
        ("rope_scaling llama3  rope_factor 8  rope_low_freq_factor 1  rope_high_freq_factor 4  rope_original_max_positions 0",
         "rope_original_max_positions must be at least 1, not 0"),
    ],
)
def test_numbers_out_of_range(settings, message):
    (err,) = errors(spec(settings=settings))
    assert message in err.message


# -- block statements -----------------------------------------------------------------------------------


def block(*statements: str, result: str = "out") -> str:
    return "block b(x) {\n" + "".join(f"  {s}\n" for s in statements) + f"  return {result}\n}}\n"


def test_bias_on_a_non_linear_is_an_error_at_the_word():
    text = spec("b") + block("n = layernorm(x, bias)", "out = add(x, n)")
    (err,) = errors(text)
    assert err.message == "layernorm takes no bias argument; only linear does"
    assert err.hint == "usage: linear(x, out_features, column|row|replicated[, bias])"
    assert where(text, err).startswith("bias)")


def test_linears_fourth_argument_is_only_bias():
    text = spec("b") + block("y = linear(x, hidden, replicated, biased)", "out = add(x, y)")
    (err,) = errors(text)
    assert err.message == "linear's last argument may only be the word bias, not 'biased'"
    assert where(text, err).startswith("biased")


def test_a_value_named_bias_is_still_a_value():
    text = spec("b") + block("bias = linear(x, hidden, replicated)", "out = add(x, bias)")
    assert compile_text(text, "t.par").deployment.block.ops[0].name == "bias"


def test_rope_on_a_tensor_that_is_not_fused_qkv_is_an_error_at_the_statement():
    text = spec("b") + block("n = rmsnorm(x)", "r = rope(n)", "out = add(x, r)")
    (err,) = errors(text)
    assert err.message == (
        "rope needs fused Q, K and V (it rotates the Q and K heads and leaves V): (heads + 2 × kv_heads) × head_dim "
        "= (4 + 2 × 2) × 16 = 128 features, but 'n' has 64"
    )
    assert where(text, err).startswith("r = rope(n)")


def test_rope_needs_an_even_head_dim():
    text = "model m : llama { layers 2  hidden 36  heads 4  kv_heads 2  ffn 64  batch 4  seq 8 }\n"
    (err,) = errors(text)
    assert err.message == "rope rotates pairs of features: head_dim must be even, not 9"


def test_a_bias_counts_its_parameters_where_it_lives():
    """Per tp rank: a column-parallel bias is split like the output, a row-parallel one whole."""
    def layer_params(block: str, tp: int) -> int:
        graph = compile_text(spec(block, mesh=f"mesh {{ tp {tp} }}"), "t.par").graph
        return sum(d["params"] for _, d in graph.nodes(data=True) if d["layer"] == 0 and 0 in d["devices"])

    hidden, qkv, ffn = 64, 128, 128
    # qwen2 is llama with a bias on the fused QKV: qkv / tp parameters more per rank
    assert layer_params("qwen2", 2) - layer_params("llama", 2) == qkv // 2
    assert layer_params("qwen2", 1) - layer_params("llama", 1) == qkv
    # gpt2: every linear; the row-parallel ones (attn, mlp) whole on every rank
    gpt = "model m : {0} {{ layers 2  hidden 64  heads 4  ffn 128  batch 4  seq 8 }}\nmesh {{ tp 2 }}\n"
    params = {}
    for name in ("gpt", "gpt2"):
        graph = compile_text(gpt.format(name), "t.par").graph
        params[name] = {d["name"]: d["params"] for _, d in graph.nodes(data=True) if d["layer"] == 0 and d["devices"] == [0]}
    extra = {name: params["gpt2"][name] - params["gpt"][name] for name in params["gpt"]}
    assert extra == {"ln1": 0, "qkv": 3 * hidden // 2, "ctx": 0, "attn": hidden, "h": 0, "ln2": 0,
                     "fc1": ffn // 2, "act": 0, "mlp": hidden, "out": 0}


def test_rope_flops_count_the_query_and_key_features():
    graph = compile_text(spec(mesh="mesh { tp 2 }"), "t.par").graph
    (node,) = [d for _, d in graph.nodes(data=True) if d["op"] == "rope" and d["layer"] == 0 and d["devices"] == [0]]
    batch, seq, features = node["out_shape"]
    assert features == (4 + 2 * 2) * 16 // 2  # this rank's heads
    assert node["flops"] == 3 * batch * seq * (4 + 2) * 16 // 2  # x cos + rotate_half(x) sin, Q and K only
    assert node["params"] == 0 and node["src"].startswith("<library>/blocks.par:")


@pytest.mark.parametrize("value", [1e-5, 1e-6, 1e-12, 500000.0, 1e16, 0.5, 2.0])
def test_real_settings_are_written_back_exactly_and_as_people_write_them(value):
    """`par fmt` and model.py write a setting such as norm_eps 1e-6 as `1e-6`, never `1e-06`,
    and reading it back gives the same number."""
    from par.dsl.frontend.format import expression
    from par.dsl.frontend.spec import Num
    from par.dsl.units import exact

    text = expression(Num(value, None))
    assert text == exact(value) and float(text) == value
    assert "e-0" not in text and "e+0" not in text


def test_a_rope_setting_of_a_block_without_rope_is_a_warning_at_it():
    text = "model m : gpt2 { layers 2  hidden 64  heads 4  batch 4  seq 8  rope_theta 500000 }\n"
    _, warnings = check(parse_text(text, "t.par"))
    (found,) = warnings
    assert found.message == "rope_theta has no effect: block 'gpt2' has no rope"
    assert where(text, found).startswith("500000")
    assert check(parse_text(spec(settings="rope_theta 500000"), "t.par"))[1] == []  # llama has rope
