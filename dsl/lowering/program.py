"""The lowered block: every op with its placements and every collective the mesh needs.

One Program describes one layer on one tensor-parallel rank; `par.dsl.dag.expand` stamps it out for
every layer and every device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from par.dsl.checks.deployment import Deployment
from par.dsl.dag.types import Dtype, Kind, OpName
from par.dsl.frontend.source import Span
from par.dsl.lowering.placement import Placement, R
from par.dsl.registry.collectives import COLLECTIVES

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Step:
    """One op, collective or local slice of the layer, in the order every rank issues them."""

    name: str  # node-id component: `qkv`, `allgather_qkv`, `slice_ctx`
    op: OpName  # an op or collective of the registry
    kind: Kind
    inputs: tuple[str, ...]  # step names, or the block's parameter
    in_placement: Placement
    out_placement: Placement
    in_shape: Shape  # local, per device
    out_shape: Shape
    global_in: Shape
    global_out: Shape
    span: Span
    flops: int = 0  # per device
    params: int = 0  # per device
    wire_fraction: tuple[int, int] = (0, 1)  # of the full tensor's bytes, sent by each rank
    style: str | None = None
    bias: bool = False  # linear: it adds a bias
    reason: str | None = None
    inserted: bool = False
    # Backward communication (par.dsl.lowering.backward). `pair`: the forward/backward pair (`PAIRS`) that
    # performs a collective or slice (None: a compute step, or a plain local slice). `copied`:
    # the output enters column-parallel linears through `copy_to_tp`, which AllReduces the
    # gradient they give it. `backward_reason`: why an AllGather's backward keeps this rank's
    # part of the gradient (a local slice) where a ReduceScatter would sum zeros.
    pair: str | None = None
    copied: bool = False
    backward_reason: str | None = None
    # Steps whose operands differ in local shape or placement (the loss reads the logits and
    # the largest logit): each operand's, in order. None: every operand is in_shape, in_placement.
    operand_shapes: tuple[Shape, ...] | None = None
    operand_placements: tuple[Placement, ...] | None = None
    tied: bool = False  # the LM head's copy of the embedding matrix on the last stage (tie_embeddings, pp > 1)
    # The model's ends compute some steps in another dtype than the spec's (OpSpec.dtype,
    # input_bytes): the output's dtype and the bytes of an input element; None: the spec's.
    dtype: Dtype | None = None
    input_bytes: int | None = None
    # A plain local slice that copies its part so that its source is freed (par.dsl.lowering.copies).
    clone: bool = False


@dataclass(frozen=True, slots=True)
class Ends:
    """The model's ends (par.dsl.lowering.ends): the steps before layer 0 on the first stage,
    and after the last layer on the last stage."""

    first: tuple[Step, ...]  # reads the token ids, gives the residual stream
    first_param: str
    first_result: str
    last: tuple[Step, ...]  # reads the residual stream, gives the loss
    last_param: str
    last_result: str
    tokens: Shape  # global: one microbatch of token ids [batch, seq]
    loss: Shape  # global: the last step's output, the loss; serving: the sampled pairs [batch, 1, 2 × tp]
    # A decode step's tokens: those the step before sampled, which the last stage holds and sends
    # to the first (pp > 1); otherwise the input of the first stage.
    fed_back: bool = False


def drop_collectives(steps: tuple[Step, ...], result: str) -> tuple[tuple[Step, ...], str]:
    """The steps with every collective and slice taken as the identity and every placement R,
    and what becomes of `result`. Steps keep their names, global shapes and span."""
    alias: dict[str, str] = {}
    kept = []
    for step in steps:
        inputs = tuple(alias.get(name, name) for name in step.inputs)
        if step.kind in ("comm", "route"):
            alias[step.name] = inputs[0]
            continue
        kept.append(
            replace(
                step, inputs=inputs, in_placement=R, out_placement=R, pair=None, copied=False, operand_placements=None
            )
        )
    return tuple(kept), alias.get(result, result)


@dataclass(frozen=True, slots=True)
class Program:
    """One layer on one rank, lowered: its steps in order, with the residual stream's placement and shape."""

    deployment: Deployment
    steps: tuple[Step, ...]
    param: str  # the block's input
    result: str  # the step whose output leaves the layer
    stream: Placement  # placement of the residual stream between layers
    stream_shape: Shape  # global
    stream_local: Shape
    param_copied: bool = False  # the layer input goes through `copy_to_tp`, like a step's output
    ends: Ends | None = None  # the embedding, final norm, head and loss, when the model has a vocabulary

    @property
    def collectives(self) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.kind == "comm")

    def without_collectives(self, *, tp: bool = True, ep: bool = True) -> Program:
        """The layer with every collective and slice taken as the identity and every placement R:
        what one rank per group runs, and the math of the unsharded reference. Steps keep their
        names, global shapes and span; local shapes, FLOPs and parameters stay per device.
        `tp=False` keeps the tensor-parallel ones, `ep=False` the token routing (and the routed
        placements) of the expert-parallel group."""
        if tp and ep:
            steps, result = drop_collectives(self.steps, self.result)
        else:
            alias: dict[str, str] = {}
            kept = []

            def placed(placement: Placement) -> Placement:
                return Placement("R", routed=placement.routed and not ep) if tp else Placement(placement.kind, placement.dim, placement.routed and not ep)

            for step in self.steps:
                inputs = tuple(alias.get(name, name) for name in step.inputs)
                group = COLLECTIVES[step.op].group if step.kind != "compute" else None
                if group is not None and (ep if group == "ep" else tp):
                    alias[step.name] = inputs[0]
                    continue
                changed = replace(
                    step,
                    inputs=inputs,
                    in_placement=placed(step.in_placement),
                    out_placement=placed(step.out_placement),
                    operand_placements=tuple(map(placed, step.operand_placements)) if step.operand_placements else None,
                )
                # Without tensor parallelism nothing is copied into it; token routing keeps its pair.
                kept.append(replace(changed, pair=step.pair if group == "ep" else None, copied=False) if tp else changed)
            if not tp:
                return replace(self, steps=tuple(kept), result=alias.get(self.result, self.result))
            steps, result = tuple(kept), alias.get(self.result, self.result)
        return replace(
            self,
            steps=steps,
            result=result,
            stream=R,
            stream_local=self.stream_shape,
            param_copied=False,
        )
