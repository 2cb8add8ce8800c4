"""model.py: runnable torch.distributed code for one spec, rendered from templates/model.py.jinja.

This module is the template's view-model: plain Python over the compiled Program and DAG
(it never imports torch). `pytorch_layer` writes the sharded layer, `pytorch_ops` the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from par.codegen.pytorch.layer import ShardedLayer, sharded_layer
from par.codegen.pytorch.ops import LayerCode, reference_layer
from par.codegen.templating import render
from par.dsl.compiler import Compiled
from par.dsl.escape import python_comment
from par.dsl.lowering.backward import PAIRS
from par.dsl.lowering.placement import S_SEQ

TORCH_DTYPES = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}
# Largest relative error --check accepts: max |sharded - reference| / max |reference| per tensor.
TOLERANCES = {"fp32": "1e-5", "bf16": "5e-2", "fp16": "1e-2"}


@dataclass(frozen=True, slots=True)
class ModelView:
    source: str  # the spec's path, escaped for the banner comment
    model: str
    block: str
    layer_class: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    batch: int
    seq: int
    dtype: str
    tolerance: str
    tp: int
    pp: int
    dp: int
    world: int
    microbatches: int
    schedule: str
    stages: str
    sequence_parallel: bool  # the residual stream is split along seq across tp ranks
    stream_shape: str  # one microbatch on one rank, between layers and stages
    gqa: bool
    layer: ShardedLayer
    reference: LayerCode
    helpers: tuple[str, ...]  # forward/backward pairs and head reorderings the code defines
    primitives: tuple[str, ...]  # collectives the code issues: allreduce allgather reducescatter alltoall
    reduces_gradients: bool  # some gradient is summed over tp or averaged over dp after backward


def emit_model(compiled: Compiled) -> str:
    return render("model.py.jinja", view=model_view(compiled))


def model_view(compiled: Compiled) -> ModelView:
    program = compiled.program
    deployment = program.deployment
    model, mesh = deployment.model, deployment.mesh
    layer = sharded_layer(program)
    pairs = [PAIRS[helper] for helper in layer.helpers if helper in PAIRS]
    primitives = {kind for pair in pairs for kind in (pair.forward, pair.backward) if kind}
    reduces_gradients = bool(layer.partial_gradients) or mesh.dp > 1
    if reduces_gradients:
        primitives.add("allreduce")
    return ModelView(
        source=python_comment(compiled.graph.graph["source"]),
        model=model.name,
        block=deployment.block.name,
        layer_class=_class_name(deployment.block.name) + "Layer",
        layers=model.layers,
        hidden=model.hidden,
        heads=model.heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        batch=model.batch,
        seq=model.seq,
        dtype=TORCH_DTYPES[model.dtype],
        tolerance=TOLERANCES[model.dtype],
        tp=mesh.tp,
        pp=mesh.pp,
        dp=mesh.dp,
        world=mesh.world,
        microbatches=mesh.microbatches,
        schedule=mesh.schedule,
        stages=_tuple_literal(mesh.stages),
        sequence_parallel=program.stream == S_SEQ,
        stream_shape=_tuple_literal(program.stream_local),
        gqa=model.kv_heads != model.heads,
        layer=layer,
        reference=reference_layer(program),
        helpers=tuple(sorted(layer.helpers)),
        primitives=tuple(sorted(primitives)),
        reduces_gradients=reduces_gradients,
    )


def _class_name(block: str) -> str:
    """CamelCase of the block's name; `Block` in front where that would not start with a letter (`_1`)."""
    name = "".join(part[:1].upper() + part[1:] for part in block.split("_") if part)
    return name if name[:1].isalpha() else "Block" + name


def _tuple_literal(value) -> str:
    return repr(tuple(value))
