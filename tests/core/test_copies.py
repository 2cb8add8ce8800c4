"""Which local slices copy their part (par.dsl.lowering.copies), and what the DAG and the cost model make of it.

A slice kept for backward is a view that keeps its whole source alive; it copies where nothing
else keeps the source, and stays a view where something does (a copy would only add its part).
"""

from par.dsl.cost.accounting import saved_tensors

MODEL = "model m : {block} {{ layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }}\n"
BASELINE = MODEL.format(block="gpt") + "mesh { tp 2 }\nplace allgather after qkv, fc1 as mlp\n"


def clones(compiled) -> dict[str, bool]:
    return {step.name: step.clone for step in compiled.program.steps if step.op == "slice"}


def test_the_baselines_gelu_output_is_freed_and_attentions_output_is_kept_anyway(compile_spec):
    compiled = compile_spec(BASELINE)
    # gelu keeps its input, not its output: only the view would keep the whole output alive.
    # attention keeps its output for its backward: the view of it costs nothing.
    assert clones(compiled) == {"slice_act": True, "slice_ctx": False}
    graph = compiled.graph
    slices = {data["name"]: data.get("clone", False) for _, data in graph.nodes(data=True) if data["op"] == "slice"}
    assert slices == {"slice_act": True, "slice_ctx": False}


def test_the_cost_model_keeps_the_copied_part_and_not_its_source(compile_spec):
    compiled = compile_spec(BASELINE)
    kept = saved_tensors(compiled.graph)[0]
    names = {key[0]: size for key, size in kept.items()}
    fp32, tokens, ffn, tp = 4, 4 * 8, 64, 2
    assert names["layer_0_slice_act_gpu0"] == tokens * ffn // tp * fp32
    assert not any("_act_gpu" in node and "slice" not in node for node in names)  # gelu's whole output
    # attention's output is kept whole (attention keeps it), and the slice of it is no extra tensor
    assert not any("slice_ctx" in node for node in names)

