"""One-line summaries of a DAG's model and mesh, worded alike in the drawings and the cost report."""

from __future__ import annotations

from par.dsl.dag.types import GraphAttrs
from par.dsl.units import plural


def model_line(graph_data: GraphAttrs, *, drawing: bool) -> str:
    """The DAG's model in one line, as the cost report words it:
    `model: gpt2 (gpt block), 2 layers, hidden 4096, heads 32 (kv 32), ffn 16384, fp16`.

    A drawing writes `model gpt2 (gpt block): 2 layers, ...` and names the kv heads only where
    they differ from the heads: `heads 8 (2 kv)`.
    """
    model = graph_data["model"]
    named = f"{model['name']} ({model['block']} block)"
    if "block_layers" in model:  # a block per range of layers
        ranges = ", ".join(f"{use['block']} {use['first']}-{use['last']}" for use in model["block_layers"])
        named = f"{model['name']} ({ranges})"
    if drawing:
        head = f"model {named}:"
        kv = f" ({model['kv_heads']} kv)" if model["kv_heads"] != model["heads"] else ""
    else:
        head, kv = f"model: {named},", f" (kv {model['kv_heads']})"
    return f"{head} {model['layers']} layers, hidden {model['hidden']}, heads {model['heads']}{kv}, ffn {model['ffn']}{_vocab(graph_data)}, {model['dtype']}"


def _vocab(graph_data: GraphAttrs) -> str:
    """`, vocab 50257 (padded to 50258, tied)`: the model's ends, when it has them."""
    model = graph_data["model"]
    if model.get("vocab") is None:
        return ""
    notes = [f"padded to {model['padded_vocab']}"] if model["padded_vocab"] != model["vocab"] else []
    notes += ["tied"] if model["tie_embeddings"] else []
    notes += ["learned positions"] if model["positions"] == "learned" else []
    return f", vocab {model['vocab']}" + (f" ({', '.join(notes)})" if notes else "")


def mesh_line(graph_data: GraphAttrs, *, drawing: bool) -> str:
    """The DAG's mesh and pipeline in one line, as the cost report words it:
    `mesh: tp 2 x pp 2 x dp 1 = 4 devices; 4 microbatches of [32, 10000, 4096] per step, 1f1b schedule`.

    A drawing writes `mesh: tp 2 × pp 2 × dp 1 = 4 GPUs, 4 microbatches (1f1b)` and gives the
    microbatch's shape a line of its own.
    """
    mesh = graph_data["mesh"]
    times, device = (" × ", "GPU") if drawing else (" x ", "device")
    sizes = [("tp", mesh["tp"]), ("pp", mesh["pp"]), ("dp", mesh["dp"])]
    if "cp" in mesh:  # absent when 1: after tp, as ranks are numbered
        sizes.insert(1, ("cp", mesh["cp"]))
    grid = times.join(f"{axis} {size}" for axis, size in sizes)
    microbatches = plural(mesh["microbatches"], "microbatch", "microbatches")
    schedule = mesh["schedule"] + (f", {mesh['chunks']} chunks per stage" if "chunks" in mesh else "")
    if "serve" in graph_data:  # serving: microbatches of requests, no schedule of a training step
        run = f", {microbatches} of requests"
    elif drawing:
        run = f", {microbatches} ({schedule})"
    else:
        shape = list(graph_data["microbatch_shape"])
        run = f"; {microbatches} of {shape} per step, {schedule} schedule"
    parallel = ", sequence parallel" if mesh["sequence_parallel"] else ""
    experts = f", experts over ep {mesh['ep']}" if "ep" in mesh else ""
    context = f", context parallel ({mesh['cp_attention']})" if "cp" in mesh else ""
    zero = f", zero {mesh['zero']}" if "zero" in mesh else ""
    return f"mesh: {grid} = {plural(mesh['world'], device)}{run}{parallel}{experts}{context}{zero}"
