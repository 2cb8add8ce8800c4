"""model.py: runnable torch.distributed code for one spec, rendered from templates/model.py.jinja.

This module is the template's view-model: plain Python over the compiled Program and DAG
(it never imports torch). `layer` writes the sharded layer, `ops` the reference, and `inline`
the runtime (`par.codegen.pytorch.runtime`: trace, collectives, pairs, schedules, check,
train loop), folded for the spec and pruned to what the model reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from par.codegen.pytorch import inline
from par.codegen.pytorch.checkpoint import CheckpointTable, checkpoint_table
from par.codegen.pytorch.ends import EndsView, ends_view
from par.codegen.pytorch.layer import ShardedLayer, sharded_layer
from par.codegen.pytorch.ops import LayerCode, Line, reference_layer
from par.codegen.templating import render
from par.dsl.checks.deployment import Model
from par.dsl.compiler import Compiled
from par.dsl.dag.types import graph_attrs
from par.dsl.escape import python_comment
from par.dsl.lowering.lower import lower
from par.dsl.lowering.placement import S_SEQ
from par.dsl.lowering.program import Program
from par.dsl.units import exact

TORCH_DTYPES = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}
# The runtime modules model.py holds, where it holds them: beside the layer (the ops and linears
# it calls), beside Reference (its random streams), after the SHARDING table, and after the
# whole model (the harness). `schedule` is the pipeline module or the single-stage one.
BESIDE_LAYER = ("ops", "context", "linears", "experts", "vocab")
BESIDE_REFERENCE = ("seeds",)
AFTER_SHARDING = ("sharding",)
HARNESS = (
    "groups", "trace", "collectives", "regather", "pairs", "batches", "schedule", "zero", "step", "optimizer", "checkpoint", "modes",
    "generation", "cli",
)


@dataclass(frozen=True, slots=True)
class Decode:
    """A decode step of a spec with sequence parallelism: one position cannot be split over the
    sequence, so the step runs the block lowered without it (AllReduce after row-parallel
    linears), on the same modules, and its head reads the final norm's output as it is."""

    lines: tuple[Line, ...]  # the layer's `decode` method
    result: str
    uses_tp_rank: bool
    helpers: frozenset[str]


@dataclass(frozen=True, slots=True)
class BlockView:
    """One block's layer class, its decode step and its Reference layer."""

    name: str
    layer_class: str
    layer: ShardedLayer
    decode: Decode | None
    reference: LayerCode


@dataclass(frozen=True, slots=True)
class ModelView:
    """What model.py.jinja renders."""

    source: str  # the spec's path, escaped for the banner comment
    model: str
    block: str
    layer_class: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    batch: int
    seq: int
    dtype: str
    grad_dtype: str
    kv_dtype: str  # generation's KV cache: a serving spec's kv_dtype, else the model's dtype
    tp: int
    pp: int
    dp: int
    cp: int
    cp_attention: str
    ep: int
    world: int
    microbatches: int
    schedule: str
    sequence_parallel: bool
    recompute: str  # the mesh's: none | selective (in the layer's attention call) | full (around each layer)
    stages: str
    chunks: int  # model chunks per stage (schedule interleaved); 1: one contiguous run of layers
    stage_layers: str  # interleaved: the layers each stage holds
    stage_ranges: tuple[tuple[int, int], ...]  # the same, each stage's (first, last)
    stream_shape: str  # one microbatch on one rank, between layers and stages
    gqa: bool
    rope: tuple[tuple[str, str], ...]  # (constant, value): the rotary embedding's, where the block has one
    layer: ShardedLayer
    decode: Decode | None  # generation's decode step where it differs from the layer's forward (sequence parallelism)
    ends: EndsView | None  # the embedding, final norm, head and loss, when the model has a vocabulary
    partial_gradients: tuple[str, ...]  # the layer's and the ends' parameters whose gradients are summed over tp
    experts: tuple[tuple[str, str], ...]  # (constant, value): a mixture of experts' sizes and expert-parallel degree
    reference: LayerCode
    helpers: tuple[str, ...]  # forward/backward pairs and head reorderings the code defines
    checkpoint: CheckpointTable | None  # Hugging Face names of the parameters (--load, --save), if the block has them
    runtime: dict[str, str]  # per place (BESIDE_LAYER, ...): the runtime sections inlined there
    blocks: tuple[BlockView, ...]  # every block's classes, the first (`layer`, `decode`, `reference`) first
    layer_blocks: tuple[tuple[int, int, str], ...]  # a block per range of layers: (first, last, block); () for one block
    sharding: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # with layer_blocks: each block's SHARDING
    expert_gradients: tuple[str, ...]  # every block's local experts' weights


def emit_model(compiled: Compiled) -> str:
    return render("model.py.jinja", view=model_view(compiled))


def runtime_sections(compiled: Compiled, view: ModelView) -> dict[str, list[inline.Section]]:
    """The runtime modules folded for this spec, per place in model.py."""
    program = compiled.program
    model, mesh = program.deployment.model, program.deployment.mesh
    ends = view.ends
    constants = {
        "LAYERS": model.layers,
        "HIDDEN": model.hidden,
        "HEADS": model.heads,
        "KV_HEADS": model.kv_heads,
        "HEAD_DIM": model.head_dim,
        "BATCH": model.batch,
        "SEQ": model.seq,
        "TP": mesh.tp,
        "PP": mesh.pp,
        "DP": mesh.dp,
        "CP": mesh.cp,
        "CP_ATTENTION": mesh.cp_attention,
        "WORLD_SIZE": mesh.world,
        "MICROBATCHES": mesh.microbatches,
        "STAGES": tuple(mesh.stages),
        "CHUNKS": mesh.chunks,
        "STAGE_LAYERS": tuple(mesh.stage_layers(stage) for stage in range(mesh.pp)),
        "PARTIAL_GRADIENTS": view.partial_gradients,
        "EXPERT_GRADIENTS": view.expert_gradients,
        "EP": mesh.ep,
        "MOE": model.moe is not None,
        "SEQUENCE_PARALLEL": program.stream == S_SEQ,
        "SCHEDULE": mesh.schedule,
        "ZERO": mesh.zero if mesh.dp * mesh.cp > 1 else 0,  # no gradient group (dp x cp): nothing to shard
        "BY_HEAD": any(block.layer.by_head for block in view.blocks),
        "BLOCKWISE": bool(view.layer_blocks),
        "MIXED_PRECISION": model.dtype != "fp32",
        "FP32_GRADIENTS": model.dtype != "fp32" and mesh.grad_dtype == "fp32",
        "LOSS_SCALING": model.dtype == "fp16",
        "HF_CHECKPOINT": view.checkpoint is not None,
        "ROPE_SCALING": model.rope.scaling,
        "ENDS": ends is not None,
        # Generation runs each stage's layers in one piece: not under the interleaved schedule.
        "GENERATES": ends is not None and mesh.chunks == 1,
        "TIED": ends is not None and ends.tied,
        "LEARNED_POSITIONS": ends is not None and ends.positions,
        "PADDED": ends is not None and ends.padded_vocab != ends.vocab,
    }
    if model.moe is not None:
        constants |= {"EXPERTS": model.moe.experts, "TOP_K": model.moe.top_k}
    # Decided in every runtime module, read only where the block has experts.
    constants |= {
        "ROUTER": model.moe.router if model.moe else "softmax_topk",
        "ROUTER_NORM": model.moe.router_norm if model.moe else True,
        "ROUTER_AUX_LOSS_COEF": model.moe.router_aux_loss_coef if model.moe else 0.0,
    }
    if ends is not None:
        constants |= {"VOCAB": ends.vocab, "PADDED_VOCAB": ends.padded_vocab, "MAX_POSITIONS": ends.max_positions}
    schedule = "interleaved" if mesh.chunks > 1 else "pipeline" if mesh.pp > 1 else "single_stage"
    places = {
        "beside_layer": BESIDE_LAYER,
        "beside_reference": BESIDE_REFERENCE,
        "after_sharding": AFTER_SHARDING,
        "harness": HARNESS,
    }
    return {
        place: [inline.section(schedule if module == "schedule" else module, constants) for module in modules]
        for place, modules in places.items()
    }


def model_view(compiled: Compiled) -> ModelView:
    """The view with the runtime pieces that model.py's own code reaches, and only those."""
    view = _bare_view(compiled)
    sections = runtime_sections(compiled, view)
    every = [piece for found in sections.values() for piece in found]
    own = render("model.py.jinja", view=_placed(view, sections, set()))  # without the runtime: less to parse
    kept = inline.reachable(every, inline.own_references(own, every))
    return _placed(view, sections, kept)


def _placed(view: ModelView, sections: dict[str, list[inline.Section]], kept: set[inline.Piece]) -> ModelView:
    """`view` holding `sections` (only the `kept` pieces), joined per place."""
    runtime = {}
    for place, found in sections.items():
        texts = [part.text(kept) for part in found]
        runtime[place] = "\n\n\n".join(text for text in texts if text)
    return replace(view, runtime=runtime)


def _bare_view(compiled: Compiled) -> ModelView:
    program = compiled.program
    deployment = program.deployment
    model, mesh = deployment.model, deployment.mesh
    ends = ends_view(program)
    programs = {deployment.block.name: program} | {each.deployment.block.name: each for _, _, each in compiled.layer_programs}
    blocks = tuple(_block(each, ends is not None) for each in programs.values())
    first = blocks[0]
    layer, decode = first.layer, first.decode
    every = [block.layer for block in blocks]
    assert len({each.cache_heads for each in every}) == 1  # one KV cache shape for every layer
    expert_gradients = tuple(dict.fromkeys(name for each in every for name in each.expert_gradients))
    partial_gradients = tuple(dict.fromkeys(name for each in every for name in each.partial_gradients))
    helpers = frozenset().union(*(block.layer.helpers | (block.decode.helpers if block.decode else frozenset()) for block in blocks))
    layer_blocks = tuple((start, last, each.deployment.block.name) for start, last, each in compiled.layer_programs)
    return ModelView(
        source=python_comment(graph_attrs(compiled.graph)["source"]),
        model=model.name,
        block=deployment.block.name,
        layer_class=_class_name(deployment.block.name) + "Layer",
        layers=model.layers,
        hidden=model.hidden,
        heads=model.heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        ffn=model.ffn,
        batch=model.batch,
        seq=model.seq,
        dtype=TORCH_DTYPES[model.dtype],
        grad_dtype=TORCH_DTYPES[mesh.grad_dtype],
        kv_dtype=TORCH_DTYPES[deployment.serve.kv_dtype if deployment.serve else model.dtype],
        tp=mesh.tp,
        pp=mesh.pp,
        dp=mesh.dp,
        cp=mesh.cp,
        cp_attention=mesh.cp_attention,
        ep=mesh.ep,
        world=mesh.world,
        microbatches=mesh.microbatches,
        schedule=mesh.schedule,
        sequence_parallel=program.stream == S_SEQ,
        recompute=mesh.recompute,
        stages=_tuple_literal(mesh.stages),
        chunks=mesh.chunks,
        stage_layers=_tuple_literal(mesh.stage_layers(stage) for stage in range(mesh.pp)),
        stage_ranges=tuple(mesh.stages),
        stream_shape=_stream_shape(compiled),
        gqa=model.kv_heads != model.heads,
        rope=_rope_constants(model) if any(step.op == "rope" for step in program.steps) else (),
        layer=layer,
        decode=decode,
        ends=ends,
        partial_gradients=partial_gradients + (ends.partial_gradients if ends else ()),
        experts=_expert_constants(compiled),
        reference=first.reference,
        helpers=tuple(sorted(helpers)),
        checkpoint=None if layer_blocks else _checkpoint(compiled, layer, ends),
        runtime={},
        blocks=blocks,
        layer_blocks=layer_blocks,
        sharding=tuple((block.name, block.layer.sharding) for block in blocks) if layer_blocks else (),
        expert_gradients=expert_gradients,
    )


def _block(program: Program, cached: bool) -> BlockView:
    """A block's classes: its sharded layer (taking generation's KV cache where the model has
    ends), its decode step and its Reference layer."""
    layer = sharded_layer(program, cached=cached)
    decode = _decode(program, layer) if cached and program.stream == S_SEQ else None
    name = program.deployment.block.name
    return BlockView(name, _class_name(name) + "Layer", layer, decode, reference_layer(program))


def _decode(program: Program, layer: ShardedLayer) -> Decode:
    """The decode step's layer and head input: the block lowered again without sequence parallelism."""
    deployment = program.deployment
    program = lower(replace(deployment, mesh=replace(deployment.mesh, sequence_parallel=False)))
    decode = sharded_layer(program, cached=True)
    ends = ends_view(program)
    # The same modules in both, so the decode step runs on the prefill's parameters.
    assert decode.code.submodules == layer.code.submodules and decode.sharding == layer.sharding
    assert decode.cache_heads == layer.cache_heads and decode.code.param == layer.code.param
    # The head reads the whole (one-position) stream: nothing to gather; copy_to_tp only acts in backward.
    assert ends is not None and ends.into_head in ("", "copy_to_tp(x, self.groups.tp)")
    return Decode(decode.code.lines, decode.code.result, decode.uses_tp_rank, decode.helpers)


def _checkpoint(compiled: Compiled, layer: ShardedLayer, ends: EndsView | None) -> CheckpointTable | None:
    ends_names = [name for name, _ in ends.sharding] if ends else []
    first = [name for name in ends_names if name.split(".")[0] in ("embed", "pos_embed")]
    last = [name for name in ends_names if name not in first]
    parameters = first + [f"layers.{{i}}.{name}" for name, _ in layer.sharding] + last
    return checkpoint_table(compiled.program.deployment.block.name, parameters)


def _expert_constants(compiled: Compiled) -> tuple[tuple[str, str], ...]:
    model, mesh = compiled.program.deployment.model, compiled.program.deployment.mesh
    if model.moe is None:
        return ()
    constants: tuple[tuple[str, str], ...] = (("EXPERTS", str(model.moe.experts)), ("TOP_K", str(model.moe.top_k)), ("EP", str(mesh.ep)))
    if model.moe.router_aux_loss_coef:
        constants += (("ROUTER_AUX_LOSS_COEF", exact(model.moe.router_aux_loss_coef)),)
    return constants


def _rope_constants(model: Model) -> tuple[tuple[str, str], ...]:
    """The rotary embedding's base, and the numbers its scaling reads (par.dsl.checks.rope)."""
    rope = model.rope
    numbers = {
        "linear": [("ROPE_FACTOR", rope.factor)],
        "llama3": [
            ("ROPE_FACTOR", rope.factor),
            ("ROPE_LOW_FREQ_FACTOR", rope.low_freq_factor),
            ("ROPE_HIGH_FREQ_FACTOR", rope.high_freq_factor),
            ("ROPE_ORIGINAL_MAX_POSITIONS", rope.original_max_positions),
        ],
    }.get(rope.scaling, [])
    shown = [(name, str(value) if isinstance(value, int) else exact(value)) for name, value in numbers]
    return (("ROPE_THETA", exact(rope.theta)), *shown)


def _class_name(block: str) -> str:
    """CamelCase of the block's name; `Block` in front where that would not start with a letter (`_1`)."""
    name = "".join(part[:1].upper() + part[1:] for part in block.split("_") if part)
    return name if name[:1].isalpha() else "Block" + name


def _stream_shape(compiled: Compiled) -> str:
    """STREAM_SHAPE in the constants above it, sequence-first as model.py keeps the stream:
    `(SEQ // TP, BATCH // DP // MICROBATCHES, HIDDEN)` when that is the compiled local shape (the
    DAG's is batch-first); else as numbers."""
    program = compiled.program
    model, mesh = program.deployment.model, program.deployment.mesh
    names = ["BATCH // DP // MICROBATCHES", "SEQ", "HIDDEN"]
    sizes = [model.batch // mesh.dp // mesh.microbatches, model.seq, model.hidden]
    if program.stream.kind == "S" and program.stream.dim is not None:
        names[program.stream.dim] += " // TP"
        sizes[program.stream.dim] //= mesh.tp
    local = list(program.stream_local)
    local[0], local[1] = local[1], local[0]
    if tuple(sizes) != tuple(program.stream_local):
        return _tuple_literal(local)
    return f"({names[1]}, {names[0]}, {names[2]})"


def _tuple_literal(value) -> str:
    return repr(tuple(value))
