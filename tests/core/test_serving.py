"""Serving specs: the `serve` item and its checks, and the prefill and decode DAGs (docs/language.md, Serving)."""

from collections import Counter
from pathlib import Path

import pytest

from par.cli import main
from par.dsl.compiler import compile_text
from par.dsl.dag.expand import node_count
from par.dsl.dag.validate import validate
from par.dsl.diagnostics import CompileError, format_diagnostic
from par.dsl.frontend.format import format_spec
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_with_comments

ROOT = Path(__file__).resolve().parents[2]
# GQA (kv_heads 2 of 4) with a vocabulary, over tp 2 and two stages of two microbatches.
LLAMA = """model m : llama { layers 4  hidden 64  heads 4  kv_heads 2  ffn 128  batch 8  seq 64  vocab 100  dtype bf16 }
mesh { tp 2  pp 2  microbatches 2 }
serve { prompt 16  generate 8 }
"""
GPT_SP = """model g : gpt { layers 2  hidden 64  heads 4  batch 4  seq 64  dtype fp16 }
mesh { tp 2  sp }
serve { prompt 16  generate 4  kv_dtype fp32 }
"""


def compiled(text=LLAMA, *defines):
    overrides, _ = parse_defines(list(defines))
    return compile_text(text, "s.par", overrides)


def errors(text, *defines):
    with pytest.raises(CompileError) as caught:
        compiled(text, *defines)
    return [shown(d) for d in caught.value.diagnostics if d.is_error]


def shown(diagnostic):
    """`file:line:col: severity: message` and its hint, as the command line prints it."""
    return format_diagnostic(diagnostic, {})


def phases(result):
    return dict(result.phases)


def nodes_of(graph, op):
    return {node: data for node, data in graph.nodes(data=True) if data["op"] == op}


# -- the language ------------------------------------------------------------------------------


def test_the_serve_item_and_its_defaults():
    result = compiled()
    serve = result.deployment.serve
    assert (serve.prompt, serve.generate, serve.context, serve.kv_dtype) == (16, 8, 24, "bf16")  # the model's dtype
    assert compiled(GPT_SP).deployment.serve.kv_dtype == "fp32"


def test_overrides_reach_every_serving_setting():
    serve = compiled(LLAMA, "prompt=32", "generate=2", "kv_dtype=fp32").deployment.serve
    assert (serve.prompt, serve.generate, serve.kv_dtype) == (32, 2, "fp32")


def test_a_training_spec_has_no_serving_and_refuses_serving_overrides():
    training = LLAMA.replace("serve { prompt 16  generate 8 }\n", "")
    result = compiled(training)
    assert result.deployment.serve is None and result.phases == ()
    (message,) = errors(training, "prompt=8")
    assert message.startswith("<command line>:1:8: error: -D prompt sets a serving setting, but the spec has no serve item")


def test_a_context_longer_than_seq_is_an_error_with_the_numbers():
    (message,) = errors(LLAMA.replace("generate 8", "generate 49"))
    assert message.startswith("s.par:3:29: error: prompt (16) + generate (49) = 65 positions, more than seq (64)")
    assert "raise seq to 65" in message
    compiled(LLAMA.replace("generate 8", "generate 48"))  # 64 positions: exactly seq


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        ("serve { prompt 16 }", "s.par:3:1: error: serve does not set 'generate'"),
        ("serve { prompt 16  generate 8  kv_dtype fp8 }", "s.par:3:41: error: kv_dtype must be one of fp32, bf16, fp16, not fp8"),
        ("serve { prompt 16  generate 8  beams 4 }", "s.par:3:32: error: unknown serve setting 'beams'"),
        ("serve { prompt 0  generate 8 }", "s.par:3:16: error: prompt must be at least 1, not 0"),
        ("serve { prompt 16  generate 8 }\nserve { prompt 8  generate 8 }", "s.par:4:1: error: a spec has one serve; this is a second one"),
    ],
)
def test_bad_serve_items(serve, expected):
    found = errors(LLAMA.replace("serve { prompt 16  generate 8 }", serve))
    assert any(message.startswith(expected) for message in found), found


def test_training_settings_are_errors_or_notes_in_serving():
    (message,) = errors(LLAMA.replace("microbatches 2", "microbatches 2  grad_dtype model"))
    assert message.startswith("s.par:2:47: error: grad_dtype has no meaning in a serving spec")
    result = compiled(LLAMA.replace("microbatches 2", "microbatches 2  schedule gpipe"))
    assert any("schedule has no effect in a serving spec" in shown(d) for d in result.warnings)


def test_sequence_parallelism_is_the_prefills_only():
    result = compiled(GPT_SP)
    (note,) = [shown(d) for d in result.warnings if "sp applies to the prefill only" in shown(d)]
    assert note.startswith("s.par:2:14: note:")
    prefill, decode = phases(result)["prefill"].graph, phases(result)["decode"].graph
    assert prefill.graph["mesh"]["sequence_parallel"] and prefill.graph["stream"] == "S(seq)"
    assert not decode.graph["mesh"]["sequence_parallel"] and decode.graph["stream"] == "R"
    (message,) = errors(GPT_SP, "prompt=15")
    assert message.startswith("<command line>:1:8: error: sp splits the prefill's prompt over tp, but prompt (15) is not divisible by tp (2)")


def test_fmt_keeps_the_serve_item():
    text = "model m : gpt { layers 2  hidden 64  heads 4  batch 4  seq 64 }\nserve {prompt=16, generate 8}\n"
    formatted = format_spec(*parse_with_comments(text, "s.par"), text)
    assert formatted.splitlines()[1] == "serve { prompt 16  generate 8 }"
    assert format_spec(*parse_with_comments(formatted, "s.par"), formatted) == formatted


# -- the two DAGs ------------------------------------------------------------------------------


def test_each_phase_has_its_tokens_and_the_spec_keeps_its_seq():
    result = phases(compiled())
    for phase, tokens in (("prefill", 16), ("decode", 1)):
        graph = result[phase].graph
        assert graph.graph["microbatch_shape"] == [8 // 2, tokens, 64]
        assert graph.graph["model"]["seq"] == 64
        assert graph.graph["serve"] == {"phase": phase, "prompt": 16, "generate": 8, "context": 24, "kv_dtype": "bf16"}
        assert graph.nodes["input"]["out_shape"] == (4, tokens)


def test_a_kv_cache_per_layer_and_device_read_by_attention():
    for _, view in compiled().phases:
        graph = view.graph
        caches = nodes_of(graph, "kv_append")
        # 4 layers on each tp rank of one pipeline path; K and V of [batch / microbatches, kv_heads / tp, context, head_dim].
        assert len(caches) == 4 * 2
        assert {data["out_shape"] for data in caches.values()} == {(2, 8 // 2, 2 // 2, 16 + 8, 64 // 4)}
        assert {data["dtype"] for data in caches.values()} == {"bf16"}
        for node, data in nodes_of(graph, "attention").items():
            (cache,) = [source for source, edge in graph.pred[node].items() if edge["operands"] == (1,)]
            assert graph.nodes[cache]["op"] == "kv_append"
            assert graph.nodes[cache]["devices"] == data["devices"] and graph.nodes[cache]["layer"] == data["layer"]
            assert cache == f"layer_{data['layer']}_kv_append_gpu{data['devices'][0]}"


def test_decode_attention_reads_the_whole_context():
    view = phases(compiled())["decode"]
    local_heads_features = (4 // 2) * (64 // 4)
    for data in nodes_of(view.graph, "attention").values():
        assert data["flops"] == 4 * (8 // 2) * 1 * (16 + 8) * local_heads_features


def test_the_model_ends_in_a_sampled_token_and_no_loss():
    for _, view in compiled().phases:
        graph = view.graph
        ops = Counter(data["op"] for _, data in graph.nodes(data=True))
        assert ops["loss"] == ops["loss_max"] == ops["loss_sum"] == 0
        assert ops["embedding"] == ops["sample"] == 2  # one per tp rank
        samples = nodes_of(graph, "sample")
        assert {data["out_shape"] for data in samples.values()} == {(4, 1, 2)} and {data["dtype"] for data in samples.values()} == {"fp32"}
        (gather,) = {target for node in samples for target in graph.succ[node]}
        assert graph.nodes[gather]["op"] == "allgather" and graph.nodes[gather]["out_shape"] == (4, 1, 2 * 2)
        assert list(graph.pred["output"]) == [gather]
        assert not any("backward" in data for _, data in graph.nodes(data=True))  # nothing is trained


def test_the_head_reads_each_sequences_last_position_only():
    """As model.py's Stage.serve: the final norm over the phase's positions, then the head on
    the last one (the prefill's 16 prompt positions, a decode step's one)."""
    for phase, tokens in (("prefill", 16), ("decode", 1)):
        graph = phases(compiled())[phase].graph
        for node, data in nodes_of(graph, "last_position").items():
            (source,) = graph.pred[node]
            assert graph.nodes[source]["op"] == "rmsnorm" and data["in_shape"] == (4, tokens, 64)
            assert data["out_shape"] == (4, 1, 64) and data["flops"] == 0
            (head,) = graph.succ[node]
            assert graph.nodes[head]["name"] == "head" and graph.nodes[head]["in_shape"] == (4, 1, 64)
            assert graph.nodes[head]["flops"] == 2 * 4 * 64 * 100 // 2  # batch x hidden x vocab / tp
        assert len(nodes_of(graph, "last_position")) == 2


def test_a_decode_step_embeds_the_tokens_the_last_stage_sends_back():
    """tp 2 x pp 2: the decode step's input is on the last stage (GPUs 2, 3), which sampled the
    tokens; each of its ranks sends them to the same tp rank of the first stage, before it
    receives the step's activation. The prefill reads the prompt on the first stage."""
    decode = phases(compiled())["decode"].graph
    assert decode.nodes["input"]["devices"] == [2, 3]
    for first, last in ((0, 2), (1, 3)):
        send, recv = decode.nodes[f"token_send_gpu{last}"], decode.nodes[f"token_recv_gpu{first}"]
        assert (send["op"], send["peer"], recv["op"], recv["peer"]) == ("send", first, "recv", last)
        assert send["bytes"] == recv["bytes"] == 4 * 8  # 4 sequences' int64 ids
        assert list(decode.pred[f"token_send_gpu{last}"]) == ["input"]
        assert sorted(decode.succ[f"token_recv_gpu{first}"]) == [f"embed_gpu{first}"]
        assert decode.nodes[f"stage_1_recv_gpu{last}"]["after"] == f"token_send_gpu{last}"
    prefill = phases(compiled())["prefill"].graph
    assert prefill.nodes["input"]["devices"] == [0, 1] and not nodes_of(prefill, "send").keys() & {"token_send_gpu2"}
    one_stage = phases(compiled(LLAMA, "pp=1"))["decode"].graph
    assert len(nodes_of(one_stage, "send")) == 0 and one_stage.nodes["input"]["devices"] == [0, 1]
    # without the order recorded, the last stage could issue the send and the recv either way
    unordered = decode.copy()
    del unordered.nodes["stage_1_recv_gpu2"]["after"]
    found = [shown(d) for d in validate(unordered)]
    assert any("gpu 2 may issue token_send_gpu2 and stage_1_recv_gpu2 in either order" in m for m in found), found


def test_the_node_count_estimate_is_exact_for_both_phases():
    for text in (LLAMA, GPT_SP, LLAMA.replace("tp 2  pp 2", "tp 1  pp 2")):
        for _, view in compiled(text).phases:
            assert node_count(view.program, view.layer_programs) == view.graph.number_of_nodes()


def test_the_validator_finds_a_cache_that_attention_does_not_read():
    graph = phases(compiled())["decode"].graph.copy()
    assert validate(graph) == []
    attention = next(iter(nodes_of(graph, "attention")))
    cache = "layer_0_kv_append_gpu0"
    assert attention == "layer_0_ctx_gpu0"
    graph.remove_edge(cache, attention)
    found = [shown(d) for d in validate(graph)]
    assert any(f"{attention} lacks operand 1 of 2" in message for message in found), found
    assert any(f"{cache} has no out-edges" in message for message in found), found


def test_a_training_spec_is_compiled_as_before():
    training = compiled(LLAMA.replace("serve { prompt 16  generate 8 }\n", ""))
    ops = Counter(data["op"] for _, data in training.graph.nodes(data=True))
    assert ops["kv_append"] == ops["sample"] == 0 and ops["loss"] == 2
    assert "serve" not in training.graph.graph


@pytest.mark.slow  # a build and a lint run: ~3.5 s
def test_build_writes_both_dags_and_lint_reads_them_clean(tmp_path, capsys):
    spec = tmp_path / "serving.par"
    spec.write_text(LLAMA)
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "--svg", "none"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "serving" / "report.md").read_text().startswith("<!-- Generated by par from")
    written = sorted(path.name for path in (tmp_path / "out" / "serving").iterdir())
    assert written == [
        "dag.decode.compact.dot", "dag.decode.dot", "dag.decode.json",
        "dag.prefill.compact.dot", "dag.prefill.dot", "dag.prefill.json",
        "model.py", "report.md",
    ]
    capsys.readouterr()
    drawings = [str(tmp_path / "out" / "serving" / name) for name in written if name.endswith(".dot")]
    assert main(["lint", *drawings]) == 0, capsys.readouterr().out
    assert main(["check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "prefill: " in out and "decode: " in out


def test_a_mixture_of_experts_model_cannot_be_served_yet():
    moe = """model m : mixtral { layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  experts 4  top_k 2  batch 8  seq 64 }
serve { prompt 16  generate 8 }
"""
    (message,) = errors(moe)
    assert message.startswith("s.par:2:1: error: par does not build serving DAGs for mixture-of-experts models yet")


def test_context_parallelism_cannot_be_served_yet():
    ring = """model m : llama { layers 2  hidden 64  heads 4  ffn 128  batch 8  seq 64 }
mesh { tp 2  cp 2 }
serve { prompt 16  generate 8 }
"""
    (message,) = errors(ring)
    assert message.startswith("s.par:2:17: error: par does not build serving DAGs under context parallelism yet (cp 2)")


@pytest.mark.slow  # a build and three lint runs: ~1.5 s
def test_lint_compares_each_drawing_with_its_phase(tmp_path, capsys):
    spec = tmp_path / "sp.par"
    spec.write_text(GPT_SP)  # sp: the prefill reduce-scatters, the decode step all-reduces
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "--svg", "none"]) == 0
    folder = tmp_path / "out" / "sp"
    for phase in ("prefill", "decode"):
        assert main(["lint", str(folder / f"dag.{phase}.dot"), "--spec", str(spec)]) == 0, capsys.readouterr().out
    drawn = tmp_path / "drawn.dot"  # a decode step under a name that says nothing: held to the prefill
    drawn.write_text((folder / "dag.decode.dot").read_text())
    capsys.readouterr()
    assert main(["lint", str(drawn), "--spec", str(spec)]) == 1
    assert "SPEC002: layer 1: 2 ReduceScatter missing" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "cache"), [("baseline_tp8_pp2_serve", (2, 32, 32, 2560, 128)), ("llama3_70b_serve", (2, 32, 1, 8192, 128))])
def test_the_shipped_serving_specs_compile_both_dags(name, cache):
    from par.dsl.compiler import compile_file

    result = compile_file(ROOT / "specs" / f"{name}.par")
    assert [phase for phase, _ in result.phases] == ["prefill", "decode"]
    for _, view in result.phases:
        assert {data["out_shape"] for data in nodes_of(view.graph, "kv_append").values()} == {cache}


def test_a_phase_too_large_to_draw_is_named_by_its_file():
    from par.codegen import svg

    if svg.dot_program() is None:
        pytest.skip("Graphviz's dot is not installed")
    view = phases(compiled())["decode"]
    skipped = svg.svg_renderer(lambda _: "", file="dag.svg", max_nodes=1)(view)
    assert skipped.notice.startswith("s: dag.decode.svg not rendered: the DAG has ")
    assert "dag.decode.compact.svg draws it folded" in skipped.notice


def test_the_edges_into_a_kv_cache_do_not_rank_it():
    import re

    from par.codegen.dot.emit import emit_dot

    # The seed's form: an AllGather after QKV feeds the cache and its attention both.
    gathered = LLAMA.replace("kv_heads 2  ", "") + "place allgather after qkv\n"
    edges = re.findall(r'^\s*"([^"]+)" -> "([^"]+)"(.*)$', emit_dot(phases(compiled(gathered))["decode"]), re.M)
    into = [attrs for _, head, attrs in edges if "_kv_append_" in head]
    out = [attrs for tail, _, attrs in edges if "_kv_append_" in tail]
    assert len(into) == len(out) == 4 * 2  # every layer and rank of one pipeline path
    assert all("constraint=false" in attrs for attrs in into) and not any("constraint" in attrs for attrs in out)
