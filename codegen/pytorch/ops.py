"""How each block op reads in generated PyTorch code, and the unsharded reference layer.

Shared by the sharded layer (`pytorch_layer`) and the reference, so both do the same math.
"""

from __future__ import annotations

from dataclasses import dataclass

from par.codegen.pytorch.names import Names
from par.dsl.checks.deployment import Model
from par.dsl.lowering.program import Program
from par.dsl.units import exact

# Keyed by the registry's op names (par.dsl.registry.ops); linear, attention and rope are written
# by the layer writers. tests/core/test_registry.py holds the keys equal.
# Elementwise ops: the expression over the Python names of the operands.
ELEMENTWISE = {
    "gelu": 'F.gelu({0}, approximate="tanh")',
    "silu": "F.silu({0})",
    "add": "{0} + {1}",
    "mul": "{0} * {1}",
}
# Norms: the constructor over the feature count and the model's epsilon.
NORMS = {"layernorm": "nn.LayerNorm({0}, eps={1})", "rmsnorm": "nn.RMSNorm({0}, eps={1})"}
# The mixture-of-experts ops (par.dsl.registry.moe) in Reference: dense, every expert on every
# token, weighted by the router (zero for the experts a token was not routed to), so that it
# shares no token grouping or exchange with the sharded layer (runtime/experts.py).
REFERENCE_EXPERTS = {"router": "route({0})", "permute": "every_expert({0})", "unpermute": "weighted_sum({0}, {1})"}
NORM_PARAMETERS = {"layernorm": ("weight", "bias"), "rmsnorm": ("weight",)}


LINE_LENGTH = 120
FORWARD_INDENT = 8


@dataclass(frozen=True, slots=True)
class Line:
    """`target = expression  # comment` in a forward; the comment goes above if the line gets too long."""

    target: str
    expression: str
    comment: str = ""

    @property
    def comment_above(self) -> bool:
        width = FORWARD_INDENT + len(f"{self.target} = {self.expression}  # {self.comment}")
        return bool(self.comment) and width > LINE_LENGTH


@dataclass(frozen=True, slots=True)
class Submodule:
    """`self.attribute = constructor  # comment` in an __init__."""

    attribute: str
    constructor: str
    comment: str = ""

    @property
    def comment_above(self) -> bool:
        width = FORWARD_INDENT + len(f"self.{self.attribute} = {self.constructor}  # {self.comment}")
        return bool(self.comment) and width > LINE_LENGTH


@dataclass(frozen=True, slots=True)
class LayerCode:
    """A layer module's body: what __init__ builds and what forward computes."""

    param: str
    result: str
    submodules: tuple[Submodule, ...]
    lines: tuple[Line, ...]


# Multiples of a named size that `size` writes as such (`3 * HIDDEN`, `4 * FFN`).
_MULTIPLES = range(2, 9)


def size(value: int, model: Model) -> str:
    """A feature count of the block as model.py's constants write it: `HIDDEN`, `FFN`, the fused
    QKV width of grouped-query attention, or a small multiple of `HIDDEN` or `FFN`; else the number.
    Ties go to the first of that order."""
    named = [("HIDDEN", model.hidden)]
    if model.kv_heads != model.heads:
        named.append(("(HEADS + 2 * KV_HEADS) * HEAD_DIM", (model.heads + 2 * model.kv_heads) * model.head_dim))
    named.append(("FFN", model.ffn))
    for name, amount in named:
        if value == amount:
            return name
    for name, amount in (("HIDDEN", model.hidden), ("FFN", model.ffn)):
        for times in _MULTIPLES:
            if value == times * amount:
                return f"{times} * {name}"
    return str(value)


def norm(op: str, features: int, model: Model) -> str:
    """The constructor of a norm module over `features` with the model's epsilon."""
    return NORMS[op].format(size(features, model), exact(model.norm_eps))


def attention_call(
    operand: str,
    *,
    heads: str,
    kv_heads: str,
    groups: str = "",
    function: str = "causal_attention",
    cache: bool = False,
    recompute: bool = False,
    more: str = "",
) -> str:
    """`causal_attention(...)` (or another op over fused Q, K, V heads: `rotary_embedding`) with
    head counts written as expressions of model.py's constants; with `cache`, it passes the
    layer's KV cache of generation on; `more`: further keyword arguments; with `recompute`, the
    backward runs it again (`recomputed`)."""
    extra = (f", groups={groups}" if groups else "") + (", cache=cache" if cache else "") + (f", {more}" if more else "")
    if recompute:
        return f"recomputed({function}, {operand}, heads={heads}, kv_heads={kv_heads}{extra})"
    return f"{function}({operand}, heads={heads}, kv_heads={kv_heads}{extra})"


def linear_module(in_features: int, out_features: int, bias: bool, model: Model) -> str:
    """An unsharded linear: nn.Linear with the block's sizes."""
    return f"nn.Linear({size(in_features, model)}, {size(out_features, model)}, bias={bias})"


def reference_layer(program: Program) -> LayerCode:
    """The unsharded layer: the Program's compute steps with every collective and slice taken as
    the identity, so its modules are named as the sharded layer's are."""
    model = program.deployment.model
    whole = program.without_collectives()
    names = Names()
    for name in (whole.param, *(step.name for step in whole.steps)):
        names.of(name)
    submodules, lines = [], []
    for step in whole.steps:
        args = [names.of(name) for name in step.inputs]
        target = names.of(step.name)
        if step.op in NORMS:
            submodules.append(Submodule(target, norm(step.op, step.global_in[-1], model)))
            expression = f"self.{target}({args[0]})"
        elif step.op == "linear":
            submodules.append(Submodule(target, linear_module(step.global_in[-1], step.global_out[-1], step.bias, model)))
            expression = f"self.{target}({args[0]})"
        elif step.op == "router":
            submodules.append(Submodule(target, f"nn.Linear({size(step.global_in[-1], model)}, EXPERTS, bias=False)"))
            logits = f"self.{target}({args[0]})"
            if model.moe is not None and model.moe.router_aux_loss_coef:  # the loss of each replica's microbatch
                logits += ", chunks=DP * MICROBATCHES, batch_dim=1"  # the stream is [seq, batch, hidden]
            expression = REFERENCE_EXPERTS["router"].format(logits)
        elif step.op == "expert_linear":
            sizes = f"{size(step.global_in[-1], model)}, {size(step.global_out[-1], model)}"
            submodules.append(Submodule(target, f"ReferenceExperts({sizes})"))
            expression = f"self.{target}({args[0]})"
        elif step.op in REFERENCE_EXPERTS:
            expression = REFERENCE_EXPERTS[step.op].format(*args)
        elif step.op == "attention":
            expression = attention_call(args[0], heads="HEADS", kv_heads="KV_HEADS")
        elif step.op == "rope":
            expression = attention_call(args[0], heads="HEADS", kv_heads="KV_HEADS", function="rotary_embedding")
        else:
            expression = ELEMENTWISE[step.op].format(*args)
        lines.append(Line(target, expression))
    return LayerCode(names.of(whole.param), names.of(whole.result), tuple(submodules), tuple(lines))
