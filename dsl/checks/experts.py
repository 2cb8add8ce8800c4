"""Mixture of experts in the checks: the model's expert settings, the rules relating them to the
mesh (docs/language.md, Mixture of experts), and the `moe` block form written out in the ops
of the registry (par.dsl.registry.moe).
"""

from __future__ import annotations

import math
from dataclasses import replace

from par.dsl.checks.crosscheck import _choices as nearest
from par.dsl.checks.crosscheck import cross_checks, divisors
from par.dsl.checks.deployment import Block, Experts, Op
from par.dsl.checks.evaluate import AlreadyReported, EvalError, Namespace, did_you_mean, evaluate
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span
from par.dsl.frontend.spec import Expr, Num, Ref
from par.dsl.registry.moe import MOE_OPS, ROUTERS

# Whole-number model settings, with the checks' inclusive ranges.
EXPERT_RANGES = {
    "experts": (1, 1 << 16),
    "top_k": (1, 1 << 16),
    "expert_ffn": (1, 1 << 26),
    "shared_experts": (0, 1 << 10),
}
EXPERT_WORDS = {"router": ROUTERS, "router_norm": ("true", "false")}
CAPACITY = "capacity_factor"
AUX_LOSS = "router_aux_loss_coef"  # transformers' name
EXPERT_NUMBERS = (CAPACITY, AUX_LOSS)  # settings that take any number in their range, not only whole ones
SETTINGS = (*EXPERT_RANGES, *EXPERT_WORDS, *EXPERT_NUMBERS)  # what a model may set beside the dense ones
MOE = "moe"
MOE_OP_NAMES = frozenset(spec.name for spec in MOE_OPS) | {MOE}


def defaults(at: Span) -> dict[str, Expr]:
    """What a model that sets `experts` leaves out: each expert as wide as the dense ffn, no shared expert."""
    return {"expert_ffn": Ref("ffn", at), "shared_experts": Num(0, at)}


def resolve_experts(
    values: dict[str, int], words: dict[str, Expr], written: set[str], spans: dict[str, Span], diags: list[Diagnostic]
) -> Experts | None:
    """The model's Experts (None when it sets no `experts`); errors go to `diags`. `written`:
    the settings the spec (or -D) gives, `values` those that evaluated."""
    if "experts" not in written:
        for name in sorted(written & (set(SETTINGS) - {"experts"})):
            diags.append(error(f"{name} is set but the model has no experts", spans[name], hint="add `experts N  top_k K`, or remove it"))
        return None
    if "top_k" not in written:
        diags.append(error("a model with experts must set top_k: how many experts each token goes to", spans["experts"]))
        return None
    router = _word("router", words.get("router"), "softmax_topk", diags)
    norm = _word("router_norm", words.get("router_norm"), "true", diags)
    capacity = _number(CAPACITY, words.get(CAPACITY), diags)
    aux_loss = _number(AUX_LOSS, words.get(AUX_LOSS), diags)
    if router is None or norm is None or capacity is None or aux_loss is None:
        return None
    if any(name not in values for name in EXPERT_RANGES):
        return None
    return Experts(
        experts=values["experts"],
        top_k=values["top_k"],
        expert_ffn=values["expert_ffn"],
        shared_experts=values["shared_experts"],
        router=router,
        router_norm=norm == "true",
        capacity_factor=capacity,
        router_aux_loss_coef=aux_loss,
    )


def _word(name: str, expr: Expr | None, default: str, diags: list[Diagnostic]) -> str | None:
    if expr is None:
        return default
    options = EXPERT_WORDS[name]
    if isinstance(expr, Ref) and expr.name in options:
        return expr.name
    shown = expr.name if isinstance(expr, Ref) else "a number"
    diags.append(error(f"{name} must be {' or '.join(options)}, not {shown}", expr.span, hint=did_you_mean(shown, options)))
    return None


# Each number setting: its default, its inclusive range and what the range's ends mean.
_NUMBERS = {
    CAPACITY: (1.0, (1, 1000), "from 1 (balanced routing) to 1000"),
    AUX_LOSS: (0.0, (0, 1000), "from 0 (no auxiliary loss) to 1000"),
}


def _number(name: str, expr: Expr | None, diags: list[Diagnostic]) -> float | None:
    default, (low, high), meaning = _NUMBERS[name]
    if expr is None:
        return default

    def no_names(ref: str, span: Span):
        raise EvalError(error(f"{name} is a number, not a name ('{ref}')", span))

    try:
        value = evaluate(expr, no_names)
    except EvalError as exc:
        diags.append(exc.diagnostic)
        return None
    if not low <= value <= high:
        diags.append(error(f"{name} must be {meaning}, not {value:g}", expr.span))
        return None
    return float(value)


# -- rules relating experts to the mesh (as par.dsl.checks.crosscheck's) ------------------------------


def _top_k(experts, top_k):
    if top_k > experts:
        return (f"top_k ({top_k}) is more than experts ({experts}): a token cannot go to more experts than there are", "top_k", f"use top_k {experts} or fewer", "error")


def _experts_ep(experts, ep):
    if experts % ep:
        return (
            f"experts ({experts}) is not divisible by ep ({ep}): each rank of an expert-parallel group holds experts / ep whole experts",
            "ep",
            f"use ep {nearest(divisors(experts), ep)}",
            "error",
        )


def _ep_dp(ep, dp, tp, pp):
    if dp % ep:
        world = tp * pp * math.lcm(dp, ep)
        return (
            f"ep ({ep}) does not divide dp ({dp}): an expert-parallel group is ep data-parallel replicas "
            f"(tp {tp} × pp {pp} × dp {dp} = {tp * pp * dp} devices)",
            "ep",
            f"use ep {nearest(divisors(dp), ep)}, or dp {math.lcm(dp, ep)} ({world} devices)",
            "error",
        )


def _etp_tp(etp, tp):
    if tp % etp:
        return (
            f"etp ({etp}) does not divide tp ({tp}): an expert's tensor-parallel group is part of the attention's, "
            "and the tp ranks split into tp / etp expert-parallel members",
            "etp",
            f"use etp {tp} (the divisors of tp are {', '.join(map(str, divisors(tp)))}; par lowers etp = tp only, for now)",
            "error",
        )
    if etp != tp:
        return (
            f"etp ({etp}) is below tp ({tp}): par splits each expert over the whole tensor-parallel group only "
            f"(etp = tp); experts split over part of it, each tp group holding tp / etp = {tp // etp} "
            "expert-parallel members, are not lowered yet",
            "etp",
            f"use etp {tp}, or leave etp out",
            "error",
        )


def _expert_ffn_tp(expert_ffn, tp):
    if expert_ffn % tp:
        return (
            f"expert_ffn ({expert_ffn}) is not divisible by tp ({tp}): each expert is tensor-parallel over the tp group",
            "expert_ffn",
            f"use tp {nearest(divisors(expert_ffn), tp)}, or an expert_ffn that is a multiple of {tp}",
            "error",
        )


def _balanced(batch, dp, microbatches, seq, top_k, experts):
    if batch % (dp * microbatches):
        return None  # the batch split's own rule reports it
    tokens = batch // (dp * microbatches) * seq
    if tokens * top_k % experts:
        return (
            f"a microbatch's {tokens} tokens × top_k ({top_k}) = {tokens * top_k} do not divide among experts ({experts}): "
            "par counts balanced routing, the same number of tokens for each expert",
            "experts",
            f"use experts {nearest(divisors(tokens * top_k), experts)}, or a seq or batch that makes tokens × top_k a multiple of {experts}",
            "error",
        )


RULES = (_top_k, _experts_ep, _ep_dp, _etp_tp, _expert_ffn_tp, _balanced)


def expert_checks(values: dict[str, int], *, sequence_parallel: bool, spans: dict[str, Span]) -> list[Diagnostic]:
    """The rules above, for a model with experts; ep on a model without them is an error."""
    if "experts" not in values:
        if values.get("ep", 1) > 1:
            return [error(f"ep is {values['ep']} but the model has no experts", spans.get("ep"), hint="set `experts N  top_k K` in the model, or ep 1")]
        if values.get("etp", values.get("tp")) != values.get("tp"):
            return [error(f"etp is {values['etp']} but the model has no experts", spans.get("etp"), hint="set `experts N  top_k K` in the model, or leave etp out")]
        return []
    return cross_checks(values, sequence_parallel=sequence_parallel, spans=spans, rules=RULES)


def used_without_experts(block: Block, diags: list[Diagnostic], model: str) -> None:
    for op in block.ops:
        if op.op in MOE_OP_NAMES:
            hint = f"add `experts N  top_k K` to model {model}"
            diags.append(error(f"{op.op} needs a model with experts, and model {model} sets none", op.span, hint=hint))
            return


# -- the block form ---------------------------------------------------------------------------------


def write_out(block: Block, namespace: Namespace, diags: list[Diagnostic]) -> Block | None:
    """Each `y = moe(x, act)` of the block as the ops it stands for, `y` its last:

        y_router = router(x)
        y_tokens = permute(x, y_router)
        y_gate = expert_linear(y_tokens, expert_ffn, column)   # swiglu: gate and up
        y_up   = expert_linear(y_tokens, expert_ffn, column)
        y_act  = silu(y_gate)
        y_prod = mul(y_act, y_up)
        y_down = expert_linear(y_prod, hidden, row)
        y      = unpermute(y_down, y_router)

    With shared experts, a dense MLP of shared_experts × expert_ffn runs beside them on every token
    (y_shared_*) and `y = add(y_routed, y_shared)`.
    """
    if all(op.op != MOE for op in block.ops) or "experts" not in namespace.names():
        return block  # without experts the checks report the moe itself
    sizes = {}
    for name in ("hidden", "expert_ffn", "shared_experts"):
        try:
            sizes[name] = int(namespace.get(name))
        except (EvalError, AlreadyReported):
            return None  # reported at the setting
    taken = {op.name for op in block.ops} | {block.param}
    ops: list[Op] = []
    ok = True
    for op in block.ops:
        if op.op != MOE:
            ops.append(op)
            continue
        written = _moe_ops(op, sizes)
        clashes = sorted({new.name for new in written if new.name != op.name} & taken)
        if clashes:
            diags.append(error(f"moe '{op.name}' writes out ops named {', '.join(clashes)}, which the block already uses", op.span, hint="rename them or the moe"))
            ok = False
        taken |= {new.name for new in written}
        ops.extend(written)
    return replace(block, ops=tuple(ops)) if ok else None


def _moe_ops(moe: Op, sizes: dict[str, int]) -> list[Op]:
    y, (x,) = moe.name, moe.inputs
    shared = sizes["shared_experts"]

    def op(name: str, kind: str, inputs: tuple[str, ...], size: int | None = None, style: str | None = None) -> Op:
        return Op(name=name, op=kind, inputs=inputs, span=moe.span, out_features=size, style=style)

    def mlp(prefix: str, source: str, width: int, linear: str) -> tuple[list[Op], str]:
        if moe.style == "swiglu":
            body = [
                op(f"{prefix}_gate", linear, (source,), width, "column"),
                op(f"{prefix}_up", linear, (source,), width, "column"),
                op(f"{prefix}_act", "silu", (f"{prefix}_gate",)),
                op(f"{prefix}_prod", "mul", (f"{prefix}_act", f"{prefix}_up")),
            ]
        else:
            body = [op(f"{prefix}_fc1", linear, (source,), width, "column"), op(f"{prefix}_act", "gelu", (f"{prefix}_fc1",))]
        last = body[-1].name
        return body, last

    routed_name = f"{y}_routed" if shared else y
    experts, hidden_in = mlp(y, f"{y}_tokens", sizes["expert_ffn"], "expert_linear")
    ops = [
        op(f"{y}_router", "router", (x,)),
        op(f"{y}_tokens", "permute", (x, f"{y}_router")),
        *experts,
        op(f"{y}_down", "expert_linear", (hidden_in,), sizes["hidden"], "row"),
        op(routed_name, "unpermute", (f"{y}_down", f"{y}_router")),
    ]
    if shared:
        body, last = mlp(f"{y}_shared", x, shared * sizes["expert_ffn"], "linear")
        ops += [*body, op(f"{y}_shared", "linear", (last,), sizes["hidden"], "row"), op(y, "add", (routed_name, f"{y}_shared"))]
    return ops

