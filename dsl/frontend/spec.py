"""The typed spec: what a .par file says, as frozen dataclasses that keep their source spans.

Nothing here is checked or evaluated yet; `par.dsl.checks.check` turns a Spec into a Deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

from par.dsl.diagnostics import Diagnostic
from par.dsl.frontend.source import Span


@dataclass(frozen=True, slots=True)
class Num:
    """A number as written."""

    value: int | float
    span: Span


@dataclass(frozen=True, slots=True)
class Ref:
    """A name standing for a value: a setting or a block's parameter."""

    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    """`left op right`."""

    op: str  # one of + - * /
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    """`-operand`."""

    operand: Expr
    span: Span


Expr = Num | Ref | BinOp | Neg


@dataclass(frozen=True, slots=True)
class Setting:
    """`name value`: one setting of a model, mesh, hardware or serve item."""

    name: str
    value: Expr
    span: Span  # the whole `name value`
    name_span: Span


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One entry of `stages [...]`: a layer count, or an inclusive layer range `first..last`."""

    first: Expr
    last: Expr | None  # None: `first` is a count
    span: Span


@dataclass(frozen=True, slots=True)
class LayerUse:
    """`deepseek 3..60` after a model's colon: the block of an inclusive range of layers."""

    block: str
    first: Expr
    last: Expr
    span: Span
    block_span: Span


@dataclass(frozen=True, slots=True)
class ModelDecl:
    """`model name : block { settings }`: the model, its block (or a block per range of layers) and its sizes."""

    name: str
    block: str | None  # the first block named after the colon
    settings: tuple[Setting, ...]
    span: Span
    block_span: Span | None
    layer_uses: tuple[LayerUse, ...] = ()  # `: a 0..2, b 3..60`; empty: `block` for every layer


@dataclass(frozen=True, slots=True)
class MeshDecl:
    """`mesh { settings }`: the parallel degrees, microbatches, stages and schedule."""

    settings: tuple[Setting, ...]
    stages: tuple[StageSpec, ...] | None
    stages_span: Span | None
    schedule: str | None
    schedule_span: Span | None
    sequence_parallel: bool
    sp_span: Span | None
    span: Span


@dataclass(frozen=True, slots=True)
class Statement:
    """`target = op(arg, ...)`: one op of a block's dataflow."""

    target: str
    op: str
    args: tuple[Expr, ...]
    span: Span
    target_span: Span
    op_span: Span


@dataclass(frozen=True, slots=True)
class BlockDef:
    """`block name(param) { statements; return result }`: a layer's dataflow."""

    name: str
    param: str
    statements: tuple[Statement, ...]
    result: str
    span: Span
    name_span: Span
    param_span: Span
    result_span: Span


@dataclass(frozen=True, slots=True)
class PlaceTarget:
    """One `after step [as alias]` of a `place` item."""

    after: str
    alias: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class Place:
    """`place kind after step, ...`: where a collective of that kind goes."""

    kind: str
    targets: tuple[PlaceTarget, ...]
    span: Span
    kind_span: Span


@dataclass(frozen=True, slots=True)
class HardwareDecl:
    """`hardware profile { settings }`: the GPUs, a built-in profile with overrides."""

    profile: str | None
    settings: tuple[Setting, ...]
    span: Span
    profile_span: Span | None


@dataclass(frozen=True, slots=True)
class ServeDecl:
    """`serve { prompt N  generate N  kv_dtype fp16 }`: the spec deploys the model for inference."""

    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Spec:
    """One parsed .par file, items kept in the order they were written."""

    file: str
    models: tuple[ModelDecl, ...]
    meshes: tuple[MeshDecl, ...]
    blocks: tuple[BlockDef, ...]
    places: tuple[Place, ...]
    strict: tuple[Span, ...]
    hardware: tuple[HardwareDecl, ...]
    # The kinds of the items that did not parse (None: text that did not start like any item);
    # checks stay quiet about what those items may have said.
    broken: tuple[str | None, ...] = ()
    serves: tuple[ServeDecl, ...] = ()  # at most one; none: the spec trains


@dataclass(frozen=True, slots=True)
class Override:
    """`-D name=value` from the command line.

    `value` is the text parsed as stage entries (a single entry for a plain number); where it
    does not parse, `error` says why, and words such as `fp16` or `1f1b` are read from `text`.
    """

    name: str
    text: str
    value: tuple[StageSpec, ...]
    span: Span
    error: Diagnostic | None = None


@dataclass(frozen=True, slots=True)
class Comment:
    """A `#` comment, kept for `par fmt`."""

    text: str  # with its leading '#'
    span: Span
