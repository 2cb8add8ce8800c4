"""The ops a block may use: how many tensors each takes and what other arguments follow."""

from __future__ import annotations

from dataclasses import dataclass

STYLES = ("column", "row", "replicated")
DIMS = ("seq", "hidden")


@dataclass(frozen=True, slots=True)
class OpDef:
    tensors: int  # leading tensor operands
    extras: tuple[str, ...] = ()  # kinds of the arguments after them: size | style | dim
    optional: int = 0  # how many trailing extras may be left out
    collective: bool = False
    usage: str = ""


OPS: dict[str, OpDef] = {
    "layernorm": OpDef(1, usage="layernorm(x)"),
    "rmsnorm": OpDef(1, usage="rmsnorm(x)"),
    "linear": OpDef(1, ("size", "style"), usage="linear(x, out_features, column|row|replicated)"),
    "attention": OpDef(1, usage="attention(qkv)"),
    "gelu": OpDef(1, usage="gelu(x)"),
    "silu": OpDef(1, usage="silu(x)"),
    "add": OpDef(2, usage="add(a, b)"),
    "mul": OpDef(2, usage="mul(a, b)"),
    "allgather": OpDef(1, collective=True, usage="allgather(x)"),
    "allreduce": OpDef(1, collective=True, usage="allreduce(x)"),
    "reducescatter": OpDef(1, ("dim",), optional=1, collective=True, usage="reducescatter(x[, seq|hidden])"),
    "alltoall": OpDef(1, ("dim",), collective=True, usage="alltoall(x, seq|hidden)"),
}

COLLECTIVES = tuple(name for name, op in OPS.items() if op.collective)


def default_dim(op: str, sequence_parallel: bool) -> str | None:
    """The dim a reducescatter scatters along when the spec does not say: seq under sequence
    parallelism, else hidden."""
    if op == "reducescatter":
        return "seq" if sequence_parallel else "hidden"
    return None
