"""The ops of a mixture-of-experts layer: one declaration each, merged into `OPS`.

A layer routes each token to `top_k` of `experts` feed-forward networks. `router` scores the
experts, `permute` groups each replica's tokens by expert ([experts, tokens, features]: the
token-sharded tensor the expert-parallel group exchanges), `expert_linear` is one linear of
every local expert at once, and `unpermute` takes each token's `top_k` results back to its
place and sums them, weighted by the router. The dispatch and combine between them are
collectives (`par.dsl.registry.collectives`), inserted where a local tensor meets a routed one.
"""

from __future__ import annotations

from par.dsl.checks.deployment import Model, Op
from par.dsl.lowering.placement import E_LAST, E_P, E_R, S_SEQ, P, R, Signature
from par.dsl.registry.ops import (
    COMPUTE_OPS,
    OPS,
    OpSpec,
    Saves,
    Shape,
    ShapeError,
    Signatures,
    Syntax,
    elements,
)

# `y = moe(x, swiglu)`: the block form the checks write out in these ops (par.dsl.checks.experts).
MOE_SYNTAX = Syntax(1, ("style",), usage="moe(x, swiglu|gelu)")
ACTIVATIONS = ("swiglu", "gelu")
ROUTERS = ("softmax_topk", "topk_softmax")


def experts_of(model: Model) -> int:
    if model.moe is None:
        raise ShapeError("a mixture-of-experts op needs the model's `experts` and `top_k`")
    return model.moe.experts


def _router_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    """A score per expert: the gate logits, then the top-k choice and its weights."""
    return inputs[0][:-1] + (experts_of(model),)


def _permute_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    """Each token `top_k` times, grouped by expert: as many per expert under balanced routing."""
    x, scores = inputs
    experts = experts_of(model)
    assert model.moe is not None
    if scores[:-1] != x[:-1] or scores[-1] != experts:
        raise ShapeError(f"permute needs the tokens and their router scores: '{op.inputs[1]}' is {list(scores)}, not {list(x[:-1]) + [experts]}")
    assignments = elements(x[:-1]) * model.moe.top_k
    if assignments % experts:
        raise ShapeError(
            f"balanced routing gives each of the {experts} experts tokens × top_k / experts tokens of a microbatch, "
            f"but {elements(x[:-1])} tokens × top_k {model.moe.top_k} = {assignments} is not divisible by {experts}"
        )
    return (experts, assignments // experts, x[-1])


def _expert_linear_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    assert op.out_features is not None  # the block checker requires its size
    experts = experts_of(model)
    if len(inputs[0]) != 3 or inputs[0][0] != experts:
        raise ShapeError(
            f"expert_linear takes tokens grouped by expert, [experts ({experts}), tokens, features] (from permute); "
            f"'{op.inputs[0]}' is {list(inputs[0])}"
        )
    return inputs[0][:-1] + (op.out_features,)


def _unpermute_shape(op: Op, inputs: list[Shape], model: Model) -> Shape:
    routed, scores = inputs
    if len(routed) != 3 or routed[0] != scores[-1]:
        raise ShapeError(f"unpermute needs the experts' results (from permute) and the router scores; got {list(routed)} and {list(scores)}")
    return scores[:-1] + (routed[-1],)


def _router_flops(local_in: Shape, local_out: Shape) -> int:
    # The gate matmul, then softmax and top-k over the scores (a few FLOPs per score).
    return 2 * elements(local_in) * local_out[-1] + 5 * elements(local_out)


def _router_params(local_in: Shape, local_out: Shape) -> int:
    return local_in[-1] * local_out[-1]


def _expert_flops(local_in: Shape, local_out: Shape) -> int:
    # local_in: [local experts, tokens, features]: every token of every local expert once.
    return 2 * elements(local_in) * local_out[-1]


def _expert_params(local_in: Shape, local_out: Shape) -> int:
    return local_in[0] * local_in[-1] * local_out[-1]  # one weight per local expert, no bias


def _unpermute_flops(local_in: Shape, local_out: Shape) -> int:
    return 2 * elements(local_in)  # a multiply-add per routed element


def _no_flops(local_in: Shape, local_out: Shape) -> int:
    return 0


_LOCAL_TOKENS: Signatures = {None: (Signature((R, R), R), Signature((S_SEQ, S_SEQ), S_SEQ, mode="sp"))}

MOE_OPS: tuple[OpSpec, ...] = (
    # A replicated linear to one score per expert (hidden × experts weights), on each replica's tokens.
    OpSpec(
        "router", Syntax(1, usage="router(x)"),
        {None: (Signature((R,), R), Signature((S_SEQ,), S_SEQ, mode="sp"))},
        _router_shape, _router_flops, _router_params,
        saves=Saves(operands=(0,), output=True),
    ),
    OpSpec("permute", Syntax(2, usage="permute(x, scores)"), _LOCAL_TOKENS, _permute_shape, _no_flops),
    # Every local expert's weight: column- and row-parallel within an expert as a dense MLP's.
    OpSpec(
        "expert_linear",
        Syntax(1, ("size", "style"), usage="expert_linear(tokens, out_features, column|row|replicated)"),
        {
            "column": (Signature((E_R,), E_LAST),),
            "row": (Signature((E_LAST,), E_P),),
            "replicated": (Signature((E_R,), E_R),),
        },
        _expert_linear_shape, _expert_flops, _expert_params,
        enters_tp=frozenset({"column"}),
        saves=Saves(operands=(0,)),
    ),
    # The weighted sum is linear in the experts' results: partial sums stay partial.
    OpSpec(
        "unpermute", Syntax(2, usage="unpermute(results, scores)"),
        {None: (Signature((R, R), R), Signature((P, R), P), Signature((S_SEQ, S_SEQ), S_SEQ, mode="sp"))},
        _unpermute_shape, _unpermute_flops,
        saves=Saves(operands=(0, 1)),
    ),
)

OPS.update((spec.name, spec) for spec in MOE_OPS)
COMPUTE_OPS.update((spec.name, spec) for spec in MOE_OPS)  # made from OPS before these joined it
