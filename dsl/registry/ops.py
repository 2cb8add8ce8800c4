"""The ops a block computes: one declaration each, read by every stage and emitter.

An op's declaration holds what the core knows about it: how a block statement calls it, the
placements it accepts and produces on the tensor-parallel axis, its output shape, the FLOPs and
parameters of one device's shard, and which variants take a replicated input into the
tensor-parallel region. How generated PyTorch computes it is the emitter's
(`par.codegen.pytorch.ops`, keyed by the same names; a test holds the keys equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import prod

from par.dsl.checks.deployment import Model, Op
from par.dsl.dag.types import Dtype
from par.dsl.lowering.placement import E_LAST, E_R, S_LAST, S_SEQ, P, Placement, R, Signature

Shape = tuple[int, ...]


def elements(shape: Shape) -> int:
    return prod(shape)  # in C: the cost model asks it of every node


@dataclass(frozen=True, slots=True)
class Syntax:
    """How a block statement calls an op: `tensors` leading operands, then the extras."""

    tensors: int
    extras: tuple[str, ...] = ()  # kinds of the arguments after them: size | style | dim | bias (the word)
    optional: int = 0  # how many trailing extras may be left out
    usage: str = ""


class ShapeError(Exception):
    """The inputs of an op do not fit it; the message names them."""


ShapeRule = Callable[[Op, list[Shape], Model], Shape]  # (op, global input shapes, model) -> output shape
PerDevice = Callable[[Shape, Shape], int]  # (local input shape, local output shape) -> count on one device
Signatures = Mapping[str | None, tuple[Signature, ...]]  # variant -> signatures, preferred first


def no_parameters(local_in: Shape, local_out: Shape) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class Stored:
    """What one device's activations are stored as: the size of the spec's dtype, the model's head
    size, and whether attention expands K and V per query head (grouped-query attention in fp32)."""

    dtype_bytes: int
    head_dim: int
    expands_kv: bool = False


StoredBytes = Callable[[Shape, Shape, Stored], int]  # (local input shape, local output shape, storage) -> bytes


def no_bytes(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class Saves:
    """What autograd keeps for an op's backward in the generated code (docs/cost.md, Activation memory),
    as measured with torch.autograd.graph.saved_tensors_hooks (tests/torch/test_saved_tensors.py).

    `operands`: the indices of the operands it keeps (the tensors themselves: one kept by several
    ops is one tensor); `output`: whether it keeps its result; `extra`: bytes of tensors it
    allocates only for its backward (statistics, expanded heads), as torch's CUDA kernels keep
    them; `on_cpu`: what torch's CPU kernels keep beyond that (negative: short of it).
    An operand that is a view (a local slice) keeps the whole tensor it views alive.
    """

    operands: tuple[int, ...] = ()
    output: bool = False
    extra: StoredBytes = no_bytes
    on_cpu: StoredBytes = no_bytes


NOTHING = Saves()


@dataclass(frozen=True, slots=True)
class OpSpec:
    """Everything par knows of one op (docs/architecture.md, The registry)."""

    name: str
    syntax: Syntax
    # What the op accepts and produces on the tensor-parallel axis, by variant: the value of its
    # style argument (linear), None for an op without one. The variants are the values the
    # argument may take.
    signatures: Signatures
    shape: ShapeRule
    flops: PerDevice  # forward, multiply-add = 2
    params: PerDevice = no_parameters
    # Parameters of the bias an op takes when its statement says `bias` (an op whose syntax has a
    # `bias` extra). A bias adds one FLOP per output element, below 1 / in_features of a
    # linear's own: not counted.
    bias: PerDevice = no_parameters
    # The share of the input's features the op computes on, for its FLOPs (rope: Q and K of a
    # fused QKV, not V); None: all of them.
    computes_on: Callable[[Model], Fraction] | None = None
    # Variants whose output differs per tensor-parallel rank although their input is replicated:
    # the input's gradient is partial there, so a replicated input enters through `copy_to_tp`
    # (identity forward, AllReduce of the gradient in backward; par.dsl.lowering.backward).
    enters_tp: frozenset[str | None] = frozenset()
    # The split dims (`Placement.dim`) along which the op keeps parts apart: cut its inputs and
    # its output into n equal parts along the dim, and part k of the output depends only on
    # part k of each input. Elementwise ops keep both dims apart; attention keeps heads apart
    # (features: the parts of a fused QKV split along them are whole heads of Q, K and V) but
    # mixes positions. An AllGather whose result reaches only such ops and then slices has a
    # gradient that is zero outside each rank's part (par.dsl.lowering.backward).
    keeps_parts: frozenset[int | None] = frozenset()
    saves: Saves = NOTHING  # what autograd keeps for its backward
    selective: bool = False  # `recompute selective` runs it again in backward instead of keeping what it saves
    # What it keeps where that depends on its operands' shapes (global, as the DAG's `operand_shapes`); None: `saves`.
    saves_for: Callable[[Sequence[Shape]], Saves] | None = None
    # Where the generated code computes in another dtype than the spec's: the bytes of an input
    # element (token ids: int64) and the dtype of the output (the loss: fp32, whatever the spec's).
    input_bytes: int | None = None
    dtype: Dtype | None = None


# -- shape rules ------------------------------------------------------------------------------------


def same_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    """Elementwise: the output has the shape of its inputs, which must agree."""
    if len(inputs) == 2 and inputs[0] != inputs[1]:
        raise ShapeError(
            f"{op.op} of '{op.inputs[0]}' {list(inputs[0])} and '{op.inputs[1]}' {list(inputs[1])}: shapes differ"
        )
    return inputs[0]


def _linear_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    assert op.out_features is not None  # the block checker requires linear's size
    return inputs[0][:-1] + (op.out_features,)


def _attention_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    """Fused Q, K and V in; the heads' outputs, concatenated, out."""
    _fused_qkv(op, inputs, model, "")
    return inputs[0][:-1] + (model.heads * model.head_dim,)


def _fused_qkv(op: Op, inputs: list[Shape], model: Model, need: str) -> None:
    """Raises ShapeError unless the input's features are a fused Q, K and V."""
    want = (model.heads + 2 * model.kv_heads) * model.head_dim
    if inputs[0][-1] != want:
        raise ShapeError(
            f"{op.op} needs fused Q, K and V{need}: (heads + 2 × kv_heads) × head_dim = "
            f"({model.heads} + 2 × {model.kv_heads}) × {model.head_dim} = {want} features, "
            f"but '{op.inputs[0]}' has {inputs[0][-1]}"
        )


def _rope_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    """Rotates the Q and K heads of a fused QKV in place: the shape of its input."""
    _fused_qkv(op, inputs, model, " (it rotates the Q and K heads and leaves V)")
    if model.head_dim % 2:
        raise ShapeError(f"rope rotates pairs of features: head_dim must be even, not {model.head_dim}")
    return inputs[0]


def _query_and_key(model: Model) -> Fraction:
    return Fraction(model.heads + model.kv_heads, model.heads + 2 * model.kv_heads)


# -- FLOPs and parameters of one device's shard -----------------------------------------------------


def per_element(count: int) -> PerDevice:
    """An elementwise op spending `count` FLOPs per output element."""

    def flops(local_in: Shape, local_out: Shape) -> int:
        return count * elements(local_out)

    return flops


def _matmul_flops(local_in: Shape, local_out: Shape) -> int:
    return 2 * elements(local_in) * local_out[-1]


def _attention_flops(local_in: Shape, local_out: Shape) -> int:
    # QK^T and attention-times-V, over the full seq × seq score matrix of the local heads.
    batch, seq, features = local_out
    return 4 * batch * seq * seq * features


def _weight(local_in: Shape, local_out: Shape) -> int:
    return local_in[-1] * local_out[-1]


def _linear_bias(local_in: Shape, local_out: Shape) -> int:
    # Column-parallel: this rank's part of the output features; row-parallel and replicated:
    # every output feature (each rank holds the whole bias; docs/cost.md says where it is added).
    return local_out[-1]


def _scale(local_in: Shape, local_out: Shape) -> int:
    return local_out[-1]


def _scale_and_shift(local_in: Shape, local_out: Shape) -> int:
    return 2 * local_out[-1]


# -- what autograd keeps ---------------------------------------------------------------------------
FP32 = 4  # norm statistics and attention's logsumexp are kept in fp32 whatever the dtype


def _rows(shape: Shape) -> int:
    return elements(shape) // shape[-1]


def _layernorm_stats(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return 2 * FP32 * _rows(local_out)  # mean and 1/std per row


def _layernorm_stats_on_cpu(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return -2 * (FP32 - stored.dtype_bytes) * _rows(local_out)  # the CPU kernel keeps them in the input's dtype


def _rmsnorm_stats(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return FP32 * _rows(local_out)  # 1/rms per row (torch's fused kernel, _fused_rms_norm)


def _rmsnorm_on_cpu(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    # No fused kernel on CPU: the composite keeps x·(1/rms) in fp32, and the fp32 copy of a
    # low-precision input in place of the input.
    return elements(local_out) * (2 * FP32 - stored.dtype_bytes)


def _attention_extra(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    # SDPA's fused kernels keep q, k, v (views of the fused input), the output and one fp32
    # logsumexp per query head and position, never the seq × seq scores. Grouped-query
    # attention runs with enable_gqa in fp16/bf16 (no expanded K and V); in fp32 the code
    # expands K and V per query head (each the size of the output) and the kernel keeps them.
    expanded = 2 * elements(local_out) * stored.dtype_bytes if stored.expands_kv else 0
    return FP32 * elements(local_out) // stored.head_dim + expanded


# -- signatures -------------------------------------------------------------------------------------


def same_placement(*placements: Placement, arity: int) -> Signatures:
    """An op that accepts any of `placements`, all operands alike, and gives the same."""
    return {None: tuple(Signature((p,) * arity, p) for p in placements)}


# Norms run where the residual stream lives: replicated, or split along seq under sequence
# parallelism (which is what makes the stream stay split there).
# Elementwise: each output element depends on the same element of each input.
_EVERY_DIM = frozenset({S_SEQ.dim, S_LAST.dim})

_NORM: Signatures = {None: (Signature((R,), R, mode="no_sp"), Signature((S_SEQ,), S_SEQ, mode="sp"))}


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "layernorm", Syntax(1, usage="layernorm(x)"), _NORM, same_shape, per_element(5), _scale_and_shift,
            saves=Saves(operands=(0,), extra=_layernorm_stats, on_cpu=_layernorm_stats_on_cpu),
        ),
        OpSpec(
            "rmsnorm", Syntax(1, usage="rmsnorm(x)"), _NORM, same_shape, per_element(4), _scale,
            saves=Saves(operands=(0,), extra=_rmsnorm_stats, on_cpu=_rmsnorm_on_cpu),
        ),
        OpSpec(
            "linear",
            Syntax(1, ("size", "style", "bias"), optional=1, usage="linear(x, out_features, column|row|replicated[, bias])"),
            {
                "column": (Signature((R,), S_LAST),),
                "row": (Signature((S_LAST,), P),),
                "replicated": (Signature((R,), R), Signature((S_SEQ,), S_SEQ, mode="sp")),
            },
            _linear_shape,
            _matmul_flops,
            _weight,
            bias=_linear_bias,
            enters_tp=frozenset({"column"}),
            saves=Saves(operands=(0,)),  # the input; the weight is a parameter
        ),
        # S(-1) of a fused QKV is head-aligned: each rank holds whole Q, K and V heads.
        OpSpec(
            "attention",
            Syntax(1, usage="attention(qkv)"),
            {None: (Signature((S_LAST,), S_LAST), Signature((R,), R))},
            _attention_shape,
            _attention_flops,
            saves=Saves(operands=(0,), output=True, extra=_attention_extra),
            keeps_parts=frozenset({S_LAST.dim}),
            selective=True,
        ),
        # Rotary position embedding of the Q and K heads of a fused QKV, per head and position:
        # head-aligned S(-1) or R, like attention (never S(seq): it needs each token's position).
        # Its backward rotates the gradient back, so it keeps nothing (docs/pytorch.md).
        OpSpec(
            "rope",
            Syntax(1, usage="rope(qkv)"),
            {None: (Signature((S_LAST,), S_LAST), Signature((R,), R))},
            _rope_shape,
            per_element(3),  # x·cos + rotate_half(x)·sin
            computes_on=_query_and_key,
            keeps_parts=_EVERY_DIM,
        ),
        # Nonlinear elementwise ops: anything but a partial sum; routed tokens too (inside the experts).
        OpSpec(
            "gelu", Syntax(1, usage="gelu(x)"), same_placement(R, S_SEQ, S_LAST, E_R, E_LAST, arity=1), same_shape, per_element(8),
            saves=Saves(operands=(0,)), keeps_parts=_EVERY_DIM,
        ),
        OpSpec(
            "silu", Syntax(1, usage="silu(x)"), same_placement(R, S_SEQ, S_LAST, E_R, E_LAST, arity=1), same_shape, per_element(4),
            saves=Saves(operands=(0,)), keeps_parts=_EVERY_DIM,
        ),
        # add is linear, so P + P is fine; mul is not. add keeps nothing; mul keeps both factors.
        OpSpec(
            "add", Syntax(2, usage="add(a, b)"), same_placement(R, S_SEQ, S_LAST, P, arity=2), same_shape, per_element(1),
            keeps_parts=_EVERY_DIM,
        ),
        OpSpec(
            "mul", Syntax(2, usage="mul(a, b)"), same_placement(R, S_SEQ, S_LAST, E_R, E_LAST, arity=2), same_shape, per_element(1),
            saves=Saves(operands=(0, 1)), keeps_parts=_EVERY_DIM,
        ),
    )
}


# -- the model's ends -------------------------------------------------------------------------------
# Ops of the first and last stages (par.dsl.lowering.ends), not block statements: the token
# embedding, learned positions, and the three parts of the vocabulary-parallel cross-entropy.
# Token ids are [batch, seq]. A table's parameters (its rows: the vocabulary split over tp, or
# max_positions) are not in its shapes: the builder of the ends counts them.
INT64 = 8  # token ids and positions, as torch indexes with them


def _lookup_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    return inputs[0] + (model.hidden,)


def _reduced_shape(width: int) -> ShapeRule:
    """Per token: `width` numbers (a maximum; a sum of exponentials and the target's logit)."""

    def shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
        return inputs[0][:-1] + (width,)

    return shape


def _mean_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    return (1,)


def _per_input(count: int) -> PerDevice:
    def flops(local_in: Shape, local_out: Shape) -> int:
        return count * elements(local_in)

    return flops


def _lookup_saves(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return INT64 * elements(local_in)  # each token's row on this rank (-1: another rank's)


def _positions_saves(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    return INT64 * local_out[-2]  # the positions of this rank's part of the sequence


def _softmax_saves(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    # The softmax of this rank's logits in fp32 (the gradient is softmax - one-hot) and each
    # target's row on this rank (-1: another rank's).
    return FP32 * elements(local_in) + INT64 * _rows(local_in)


# Per output element and partial output: its scale exp(lse_step - lse), the product, the sum.
MERGE_FLOPS = 3


def _merge_extra(local_in: Shape, local_out: Shape, stored: Stored) -> int:
    # One fp32 logsumexp per query head and position; the ring expands K and V per block in the
    # backward again, so unlike attention it keeps no expanded K and V (runtime/context.py).
    return FP32 * elements(local_out) // stored.head_dim


# The all-gather form's one attention per rank (par.dsl.dag.ring; its second operand holds more
# positions than its queries: the whole sequence's keys and values) keeps the QKV it reads, the
# gathered keys and values, its output and logsumexp: the backward attends again without a
# second AllGather (runtime/context.py).
GATHERED_ATTENTION_SAVES = Saves(operands=(0, 1), output=True, extra=_merge_extra)
RING_STEP_SAVES = Saves(operands=(0,))


def _ring_attention_saves(operand_shapes: Sequence[Shape]) -> Saves:
    """A ring step keeps its queries; the all-gather form's attention, whose keys span more
    positions than its queries, keeps `GATHERED_ATTENTION_SAVES`."""
    return GATHERED_ATTENTION_SAVES if operand_shapes[1][1] > operand_shapes[0][1] else RING_STEP_SAVES


def _cache_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    _fused_qkv(op, inputs, model, " (the cache keeps its K and V heads)")
    assert op.out_features is not None  # the context, set by the serving lowering
    return (2, inputs[0][0], model.kv_heads, op.out_features, model.head_dim)


def _sample_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    assert op.out_features is not None  # two numbers per tensor-parallel rank
    return (inputs[0][0], 1, op.out_features)


def _last_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    batch, _, features = inputs[0]
    return (batch, 1, features)


def _last_position(local_in: Shape, local_out: Shape) -> int:
    return local_in[0] * local_in[-1]  # one comparison per logit of each sequence's last position


MODEL_OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        # Each rank looks up the ids in its rows and zeroes the others: a partial sum over tp.
        OpSpec(
            "embedding",
            Syntax(1),
            {None: (Signature((R,), P),)},
            _lookup_shape,
            no_parameters,
            saves=Saves(extra=_lookup_saves),
            input_bytes=INT64,
        ),
        OpSpec(
            "positions",
            Syntax(1),
            {None: (Signature((R,), R), Signature((R,), S_SEQ, mode="sp"))},
            _lookup_shape,
            no_parameters,
            saves=Saves(extra=_positions_saves),
            input_bytes=INT64,
        ),
        # The maximum of this rank's logits per token (one comparison each), AllReduced with MAX.
        # The loss is computed in fp32 (the logits are cast to it).
        OpSpec("loss_max", Syntax(1), {None: (Signature((S_LAST,), P),)}, _reduced_shape(1), _per_input(1), dtype="fp32"),
        # exp(logit - max) summed, and the target's logit where this rank holds it.
        OpSpec(
            "loss_sum",
            Syntax(2),
            {None: (Signature((S_LAST, R), P),)},
            _reduced_shape(2),
            _per_input(3),
            saves=Saves(extra=_softmax_saves),
            dtype="fp32",
        ),
        # log(sum) - target logit, averaged over the tokens that have a target.
        OpSpec("loss", Syntax(1), {None: (Signature((R,), R),)}, _mean_shape, _per_input(1), dtype="fp32"),
        # Context parallelism (par.dsl.dag.ring): attention as ring steps, each this rank's queries
        # against one block of keys and values, a partial output with its logsumexp; the backward
        # runs the blocks again, so a step keeps only its queries (the QKV it reads).
        OpSpec(
            "ring_attention",
            Syntax(2),
            {None: (Signature((S_LAST, S_LAST), S_LAST), Signature((R, R), R))},
            _attention_shape,
            _attention_flops,
            saves=RING_STEP_SAVES,
            saves_for=_ring_attention_saves,
        ),
        # The partial outputs rescaled by exp(lse_step - lse) and summed (log-sum-exp merge): it keeps
        # the merged output and its logsumexp for the backward.
        OpSpec(
            "attn_merge",
            Syntax(1),
            {None: (Signature((S_LAST,), S_LAST), Signature((R,), R))},
            same_shape,
            per_element(MERGE_FLOPS),
            saves=Saves(output=True, extra=_merge_extra),
        ),
        # Serving (docs/language.md, Serving). The KV cache of one attention: this step's K and V
        # written into the cache of every position, [2, batch, kv_heads, context, head_dim] (K and
        # V stacked), split by heads like the fused QKV it reads; `out_features` is the context.
        OpSpec(
            "kv_append",
            Syntax(1),
            {None: (Signature((S_LAST,), S_LAST), Signature((R,), R))},
            _cache_shape,
            no_parameters,
        ),
        # Each sequence's last position of the final norm's output, the one the head reads when
        # serving (a view: no FLOPs).
        OpSpec("last_position", Syntax(1), {None: (Signature((R,), R),)}, _last_shape, no_parameters),
        # Greedy sampling on the vocabulary-parallel logits of the last position: this rank's
        # largest logit and its index, [batch, 1, 2] per rank (`out_features`: 2 × tp in all).
        OpSpec("sample", Syntax(1), {None: (Signature((S_LAST,), S_LAST), Signature((R,), R))}, _sample_shape, _last_position, dtype="fp32"),
    )
}
# Every op a DAG's compute node may name.
COMPUTE_OPS: dict[str, OpSpec] = OPS | MODEL_OPS
