"""The mesh's `recompute` (docs/language.md, Activation recomputation): its words and its rules."""

from par.dsl.checks.check import check
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text

MODEL = "model m : llama { layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  batch 4  seq 32  dtype fp32 }\n"


def checked(text: str, *defines: str):
    overrides, _ = parse_defines(list(defines))
    return check(parse_text(text, "t.par"), overrides)


def test_recompute_is_a_mesh_word_none_by_default_and_overridable():
    assert checked(MODEL + "mesh { tp 2 }")[0].mesh.recompute == "none"
    assert checked(MODEL + "mesh { tp 2  recompute selective }")[0].mesh.recompute == "selective"
    assert checked(MODEL + "mesh { tp 2  recompute selective }", "recompute=full")[0].mesh.recompute == "full"
    assert checked(MODEL + "mesh { tp 2  recompute none }")[0].mesh.attributes().get("recompute") is None  # DAGs read as before


def test_an_unknown_word_is_an_error_at_the_value_with_a_suggestion(errors_of):
    text = MODEL + "mesh { tp 2  recompute ful }"
    (err,) = errors_of(text)
    assert err.message == "recompute must be one of none, selective, full, not ful"
    assert (err.span.line, err.span.col) == (2, text.splitlines()[1].index("ful }") + 1)
    assert "full" in err.hint


def test_recompute_belongs_to_the_mesh_not_the_model(errors_of):
    (err,) = errors_of("model m : llama { layers 2  hidden 64  heads 4  batch 4  seq 32  recompute full }\n")
    assert "recompute" in err.message and err.span.line == 1


def test_selective_without_attention_does_nothing_and_says_so():
    text = (
        "model m : mlp { layers 2  hidden 64  heads 4  batch 4  seq 32 }\n"
        "block mlp(x) { n = layernorm(x)  up = linear(n, 4 * hidden, column)  a = gelu(up)\n"
        "  down = linear(a, hidden, row)  r = allreduce(down)  out = add(x, r)  return out }\n"
        "mesh { tp 2  recompute selective }\n"
    )
    _, warnings = checked(text)
    (warning,) = [w for w in warnings if "recompute" in w.message]
    assert warning.message.startswith("recompute selective has no effect: block mlp has no attention")
    assert warning.span.line == 4 and "recompute full" in warning.hint
    assert not [w for w in checked(text.replace("selective", "full"))[1] if "recompute" in w.message]


def test_context_parallelism_refuses_recomputation(errors_of):
    (err,) = errors_of(MODEL + "mesh { cp 2  recompute full }")
    assert "recompute full with context parallelism (cp 2) is not supported" in err.message
    assert err.span.line == 2 and err.hint


def test_a_serving_spec_refuses_recomputation(errors_of):
    (err,) = errors_of(MODEL + "mesh { tp 2  recompute selective }\nserve { prompt 16  generate 8 }\n")
    assert err.message.startswith("recompute has no meaning in a serving spec")
    assert err.span.line == 2


def test_explain_says_which_nodes_the_backward_runs_again():
    from par.commands.explain import describe
    from tests.cost.tiny import compile_spec

    graph = compile_spec("megatron_tp8_pp2", "tp=2", "layers=2", "recompute=full").graph
    assert "runs this node's forward again (recompute full), its collective issued again" in describe(graph, "layer_0_allreduce_attn", {})
    assert "recompute" not in describe(graph, "layer_0_allreduce_mlp", {})  # after the last kept tensor: not rerun
