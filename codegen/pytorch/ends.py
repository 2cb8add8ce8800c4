"""model.py's view of the model's ends: the embedding, learned positions, final norm, LM head and loss.

Read from the compiled ends (`par.dsl.lowering.ends`): which pair carries the head's input
into the tensor-parallel region is the one the compiler chose for its step.
"""

from __future__ import annotations

from dataclasses import dataclass

from par.codegen.pytorch.ops import NORM_PARAMETERS, NORMS
from par.dsl.lowering.program import Program
from par.dsl.units import exact

ROWS = "rows of the vocabulary"  # sharding: PADDED_VOCAB // TP rows per rank, the padding zero


@dataclass(frozen=True, slots=True)
class EndsView:
    """The model's ends as model.py writes them: embedding, positions, final norm and head."""

    vocab: int
    padded_vocab: int
    max_positions: int
    positions: bool  # learned absolute positions
    tied: bool  # the head is the embedding's matrix
    own_copy: bool  # tied over several stages: the last stage keeps its own copy of it
    final_norm: str  # its constructor
    into_head: str  # the expression that takes the final norm's output `x` into the head ("" : x itself)
    embed_nodes: str  # the DAG's nodes of the embedding, as a comment names them
    head_weight: str  # the head's matrix, as the last stage's forward names it
    sharding: tuple[tuple[str, str], ...]  # (parameter, how it splits), in the order of the model
    shapes: tuple[tuple[str, str], ...]  # (parameter, its full shape in model.py's constants)
    partial_gradients: tuple[str, ...]  # parameters that see only this rank's part of the sequence


def ends_view(program: Program) -> EndsView | None:
    ends = program.ends
    if ends is None:
        return None
    model, mesh = program.deployment.model, program.deployment.mesh
    norm = model.final_norm
    steps = {step.name: step for step in ends.last}
    head = steps["head"]
    into = ""
    source = steps.get(head.inputs[0])
    if source is not None and source.op == "last_position":  # serving: x[-1] of what the gather gives
        source = steps.get(source.inputs[0])
    suffix = "_dp<d>" if mesh.dp > 1 else ""
    if source is not None and source.kind == "comm":
        into = f"{source.pair}(x, dim=0, group=self.groups.tp)  # {source.name}{suffix}"  # sequence-first
    elif source is not None and source.copied:
        into = "copy_to_tp(x, self.groups.tp)"
    reduced = [step.name + suffix for step in ends.first if step.kind == "comm"]
    embed_nodes = ", ".join(["embed_gpu<rank>", *reduced])
    norms = tuple(f"final_norm.{name}" for name in NORM_PARAMETERS[norm])
    positions = model.positions == "learned"
    shapes = (
        [("embed.weight", "(VOCAB, HIDDEN)")]
        + ([("pos_embed.weight", "(MAX_POSITIONS, HIDDEN)")] if positions else [])
        + [(name, "(HIDDEN,)") for name in norms]
        + ([] if model.tie_embeddings else [("head.weight", "(VOCAB, HIDDEN)")])
    )
    split = {"embed.weight": ROWS, "head.weight": ROWS}
    partial = (
        [] if mesh.tp == 1 or not mesh.sequence_parallel else [*(["pos_embed.weight"] if positions else []), *norms]
    )
    return EndsView(
        vocab=model.vocab or 0,
        padded_vocab=model.padded_vocab(mesh.tp),
        max_positions=model.max_positions or model.seq,
        positions=positions,
        tied=model.tie_embeddings,
        own_copy=model.tie_embeddings and mesh.pp > 1,
        final_norm=NORMS[norm].format("HIDDEN", exact(model.norm_eps)),
        into_head=into,
        embed_nodes=embed_nodes,
        head_weight="self.embed.weight" if model.tie_embeddings else "self.head.weight",
        sharding=tuple((name, split.get(name, "replicated")) for name, _ in shapes),
        shapes=tuple(shapes),
        partial_gradients=tuple(partial),
    )
