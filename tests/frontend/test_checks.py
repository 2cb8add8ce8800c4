"""Semantic checks: every problem reported at once, each naming its factors and a fix."""

import pytest

from par.dsl.checks.check import check
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text


def model(**settings) -> str:
    values = {"layers": 4, "hidden": 64, "heads": 4, "ffn": 256, "batch": 8, "seq": 16, "dtype": "fp32"} | settings
    body = "  ".join(f"{k} {v}" for k, v in values.items() if v is not None)
    return f"model m : gpt {{ {body} }}\n"


def messages(errors) -> list[str]:
    return [d.message for d in errors]


def test_a_clean_spec_has_no_diagnostics(errors_of):
    assert errors_of(model() + "mesh { tp 2  pp 2  microbatches 2 }") == []


def test_divisibility_names_every_factor_and_suggests_divisors(errors_of):
    (err,) = errors_of(model(heads=30, hidden=120) + "mesh { tp 8 }")
    assert "heads (30) is not divisible by tp (8)" in err.message
    suggested = [int(word) for word in err.hint.replace(",", " ").replace("or", " ").split() if word.isdigit()]
    assert suggested and all(30 % tp == 0 for tp in suggested)
    assert (err.span.line, err.span.col) == (2, 11)  # at the tp value


def test_all_errors_are_reported_together(errors_of):
    text = model(hidden=4000, heads=30, ffn=1001, batch=7) + "mesh { tp 8  pp 8  dp 2  microbatches 2  world 12 }"
    found = " | ".join(messages(errors_of(text)))
    for expected in (
        "hidden (4000) is not divisible by heads (30)",
        "heads (30) is not divisible by tp (8)",
        "ffn (1001) is not divisible by tp (8)",
        "batch (7) is not divisible by dp (2) × microbatches (2) = 4",
        "pp (8) is more than layers (4)",
        "tp (8) × pp (8) × dp (2) = 128, but world is 12",
    ):
        assert expected in found


def test_kv_heads_rules(errors_of):
    assert errors_of(model(heads=8, hidden=64, kv_heads=2).replace(": gpt", ": llama") + "mesh { tp 2 }") == []
    (err,) = errors_of(model(heads=8, hidden=64, kv_heads=3) + "mesh { tp 1 }")
    assert "heads (8) is not a multiple of kv_heads (3)" in err.message
    (err,) = errors_of(model(heads=8, hidden=64, kv_heads=2) + "mesh { tp 4 }")
    assert "kv_heads (2) is not divisible by tp (4)" in err.message


def test_sequence_parallel_needs_seq_divisible(errors_of):
    (err,) = errors_of(model(seq=15) + "mesh { tp 2  sp }")
    assert "seq (15) is not divisible by tp (2)" in err.message


@pytest.mark.parametrize(
    "stages, problem",
    [
        ("[3, 2]", "they add up to 5"),
        ("[4, 0]", "stage 1 would hold no layer"),
        ("[0..1, 3..3]", "layer 2 is on no stage"),
        ("[0..2, 2..3]", "layer 2 is on stages 0 and 1"),
        ("[0..1]", "stages lists 1 stages but pp is 2"),
        ("[0..1, 2]", "mixes layer counts and layer ranges"),
        ("[0..1, 2..5]", "goes outside layers 0..3"),
    ],
)
def test_an_explicit_split_must_cover_every_layer_once(errors_of, stages, problem):
    found = messages(errors_of(model() + f"mesh {{ pp 2  stages {stages} }}"))
    assert any(problem in message for message in found), found


def test_uneven_default_split_keeps_every_layer():
    deployment, _ = check(parse_text(model(layers=5) + "mesh { pp 2 }", "t.par"))
    assert deployment.mesh.stages == ((0, 2), (3, 4))


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"layers": 0}, "layers must be at least 1, not 0"),
        ({"layers": -3}, "layers must be at least 1, not -3"),
        ({"hidden": "1000000 * 1000000"}, "hidden (1000000000000) is absurdly large"),
        ({"batch": 10**12}, "batch (1000000000000) is absurdly large"),
        ({"seq": 2.5}, "seq must be a whole number, not 2.5"),
        ({"dtype": "fp8"}, "dtype must be one of fp32, bf16, fp16, not fp8"),
    ],
)
def test_numbers_out_of_range(errors_of, settings, words):
    found = messages(errors_of(model(**settings)))
    assert any(words in message for message in found), found


def test_arithmetic_and_names(errors_of):
    ok = model(ffn="4 * hidden", hidden="(32 + 32)", heads="hidden / 16")
    assert errors_of(ok) == []
    deployment, _ = check(parse_text(ok, "t.par"))
    assert (deployment.model.hidden, deployment.model.heads, deployment.model.ffn) == (64, 4, 256)
    (err,) = errors_of(model(ffn="4 * hiden"))
    assert "unknown name 'hiden'" in err.message and "hidden" in err.hint
    (err,) = errors_of(model(ffn="ffn * 2"))
    assert "defined in terms of itself" in err.message
    (err,) = errors_of(model(ffn="hidden / 3"))
    assert "64 / 3 is not a whole number" in err.message


def test_unknown_and_duplicate_settings(errors_of):
    found = messages(errors_of(model() .replace("layers 4", "layers 4  layers 5  hiden 3")))
    assert any("'layers' is set twice" in m for m in found)
    assert any("unknown model setting 'hiden'" in m for m in found)


def test_block_names_and_ops(errors_of):
    text = model().replace(": gpt", ": mine") + (
        "block mine(x) {\n"
        "  a = layernorm(y)\n"
        "  b = linear(a, 10)\n"
        "  c = gelu(d)\n"
        "  d = frob(c)\n"
        "  a = add(x, x)\n"
        "  return z\n"
        "}\n"
    )
    found = errors_of(text)
    by_line = {(d.span.line, d.message) for d in found}
    expected = {
        (3, "undefined value 'y'"),
        (4, "linear takes 3 to 4 arguments, not 2"),
        (5, "'d' is used before it is defined (at t.par:6:3)"),
        (6, "unknown op 'frob'"),
        (7, "'a' is defined twice in block 'mine' (first at t.par:3:3)"),
        (8, "block 'mine' returns 'z', which it never defines"),
    }
    assert expected <= by_line, sorted(by_line)


def test_unused_values_are_errors(errors_of):
    text = model().replace(": gpt", ": mine") + "block mine(x) {\n  a = gelu(x)\n  b = gelu(x)\n  return b\n}\n"
    (err,) = errors_of(text)
    assert err.message == "'a' is computed but never used" and err.span.line == 3


def test_place_targets(errors_of):
    found = messages(errors_of(model() + "place allgathr after qkv\nplace allreduce after qqv\n"))
    assert any("unknown collective 'allgathr'" in m for m in found)
    assert any("has no op 'qqv'" in m for m in found)


def test_one_model_and_mesh(errors_of):
    found = messages(errors_of(model() + model() + "mesh { }\nmesh { }"))
    assert any("a spec has one model" in m for m in found)
    assert any("a spec has one mesh" in m for m in found)
    assert messages(errors_of("mesh { tp 2 }")) == ["the spec has no model"]


def test_hardware_profiles(errors_of):
    assert errors_of(model() + "hardware h100") == []
    assert errors_of(model() + "hardware h100 { memory_gb 40 }") == []
    found = messages(errors_of(model() + "hardware h200x"))
    assert any("unknown hardware profile 'h200x'" in m for m in found)
    found = messages(errors_of(model() + "hardware { memory_gb 40 }"))
    assert any("hardware does not set" in m for m in found)
    found = messages(errors_of(model() + "hardware h100 { efficiency 2 }"))
    assert any("efficiency must be between 0 and 1" in m for m in found)
    assert messages(errors_of(model() + "hardware h100 { devices_per_node 2.5 }")) == [
        "devices_per_node must be a whole number, not 2.5"
    ]
    (twice,) = errors_of(model() + "hardware h100 { memory_gb 40  memory_gb 50 }")
    assert twice.message == "'memory_gb' is set twice (first at t.par:2:27)"


def test_overrides_replace_settings_and_are_checked():
    overrides, _ = parse_defines(["hidden=32", "tp=2", "dtype=bf16", "stages=1,3", "pp=2", "sp=on", "schedule=gpipe"])
    deployment, _ = check(parse_text(model(ffn="4 * hidden") + "mesh { tp 4 }", "t.par"), overrides)
    assert deployment.model.hidden == 32 and deployment.model.ffn == 128
    assert deployment.mesh.tp == 2 and deployment.model.dtype == "bf16"
    assert deployment.mesh.stages == ((0, 0), (1, 3)) and deployment.mesh.sequence_parallel
    assert deployment.mesh.schedule == "gpipe"


def test_bad_overrides_point_at_the_command_line(errors_of):
    overrides, _ = parse_defines(["tpp=2", "tp=3", "sp=maybe"])
    found = errors_of(model() + "mesh { }", overrides)
    located = {(d.span.file, d.span.line): d.message for d in found}
    assert "-D: unknown setting 'tpp'" in located[("<command line>", 1)]
    assert "heads (4) is not divisible by tp (3)" in located[("<command line>", 2)]
    assert "-D sp takes on or off" in located[("<command line>", 3)]


def test_the_unknown_mesh_setting_hint_lists_every_item_the_grammar_accepts(errors_of):
    """The oracle is the grammar itself: `setting` plus each other `_mesh_item` alternative."""
    import re
    from pathlib import Path

    grammar = (Path(__file__).resolve().parents[2] / "grammar" / "par.lark").read_text(encoding="utf-8")
    items = re.search(r"^_mesh_item:(.*?)^\S", grammar, re.M | re.S).group(1)
    keywords = {name for name in re.findall(r"\w+", items) if name != "setting"}
    assert keywords >= {"stages", "schedule", "sp"}
    (err,) = errors_of(model() + "mesh { tp 2  foo 3 }")
    listed = set(err.hint.removeprefix("mesh settings are: ").split(", "))
    assert listed == keywords | {"tp", "pp", "dp", "microbatches", "world", "grad_dtype", "ep", "etp", "cp", "cp_attention", "recompute", "chunks", "zero"}


@pytest.mark.parametrize(
    "dtype, written, expected",
    [
        ("fp16", None, "fp32"),
        ("fp16", "fp32", "fp32"),
        ("fp16", "model", "fp16"),
        ("bf16", "bf16", "bf16"),
        ("fp32", "model", "fp32"),
    ],
)
def test_grad_dtype_is_fp32_or_the_models_dtype(dtype, written, expected):
    mesh = f"mesh {{ tp 2  grad_dtype {written} }}" if written else "mesh { tp 2 }"
    deployment, _ = check(parse_text(model(dtype=dtype) + mesh, "t.par"))
    assert deployment.mesh.grad_dtype == expected
    assert deployment.mesh.attributes()["grad_dtype"] == expected


def test_grad_dtype_other_than_fp32_or_the_models_is_an_error_at_its_value(errors_of):
    (err,) = errors_of(model(dtype="fp16") + "mesh { tp 2  grad_dtype bf16 }")
    assert err.message == "grad_dtype must be fp32 or model (the model's dtype, fp16), not bf16"
    assert (err.span.line, err.span.col) == (2, 25)
    (err,) = errors_of(model(dtype="fp16") + "mesh { grad_dtype 2 }")
    assert err.message.endswith("not a number")


def test_grad_dtype_is_overridable():
    overrides, _ = parse_defines(["grad_dtype=model", "dtype=bf16"])
    deployment, _ = check(parse_text(model() + "mesh { tp 2 }", "t.par"), overrides)
    assert deployment.mesh.grad_dtype == "bf16"
    overrides, _ = parse_defines(["grad_dtype=fp8"])
    with pytest.raises(CompileError, match="grad_dtype must be fp32 or model"):
        check(parse_text(model() + "mesh { tp 2 }", "t.par"), overrides)
