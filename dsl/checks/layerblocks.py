"""A block per range of layers: `model v3 : llama 0..2, deepseek 3..60 { ... }`.

Each named block is resolved as a model's single block is (par.dsl.checks.blockcheck); the
ranges must cover the layers in order, each layer once. A `place` statement applies to every
block that defines its op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from par.dsl.checks.blockcheck import _apply_places, resolve_block
from par.dsl.checks.deployment import Block
from par.dsl.checks.evaluate import AlreadyReported, EvalError, Namespace, did_you_mean, evaluate
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.spec import BlockDef, Expr, LayerUse, ModelDecl, Place

LayerBlocks = tuple[tuple[int, int, Block], ...]


def resolve_layer_blocks(
    *,
    model_decl: ModelDecl,
    spec_blocks: Sequence[BlockDef],
    library_blocks: Sequence[BlockDef],
    places: Sequence[Place],
    namespace: Namespace,
    layers: int | None,
    sequence_parallel: bool,
    blocks_broken: bool,
    blame: Callable[[Diagnostic, Expr, str], None],
) -> tuple[LayerBlocks | None, list[Diagnostic]]:
    diags: list[Diagnostic] = []
    uses = model_decl.layer_uses
    ranges = [_range(use, namespace, diags) for use in uses]
    own = {block.name: block for block in spec_blocks}
    resolved: dict[str, Block | None] = {}
    for index, use in enumerate(uses):
        if use.block in resolved:
            continue
        # Every block of the spec is checked once, with the first; the others resolve their own.
        blocks = spec_blocks if index == 0 else [own[use.block]] if use.block in own else []
        chosen = replace(model_decl, block=use.block, block_span=use.block_span, layer_uses=())
        block, found = resolve_block(
            model_decl=chosen,
            spec_blocks=blocks,
            library_blocks=library_blocks,
            places=(),
            namespace=namespace,
            sequence_parallel=sequence_parallel,
            blocks_broken=blocks_broken,
            blame=blame,
        )
        diags += found
        resolved[use.block] = block
    if layers is not None and all(r is not None for r in ranges):
        _coverage(uses, [r for r in ranges if r is not None], layers, diags)
    if any(block is None for block in resolved.values()) or any(r is None for r in ranges) or any(d.is_error for d in diags):
        return None, diags
    placed = _places(resolved, places, sequence_parallel, diags)
    if placed is None:
        return None, diags
    return tuple((first, last, placed[use.block]) for use, (first, last) in zip(uses, ranges, strict=True)), diags  # type: ignore[misc]


def _range(use: LayerUse, namespace: Namespace, diags: list[Diagnostic]) -> tuple[int, int] | None:
    bounds = []
    for expr in (use.first, use.last):
        try:
            value = evaluate(expr, namespace.lookup)
        except EvalError as exc:
            diags.append(exc.diagnostic)
            return None
        except AlreadyReported:
            return None
        if isinstance(value, float) and not value.is_integer():
            diags.append(error(f"a layer number must be whole, not {value:g}", expr.span))
            return None
        bounds.append(int(value))
    return bounds[0], bounds[1]


def _coverage(uses: Sequence[LayerUse], ranges: list[tuple[int, int]], layers: int, diags: list[Diagnostic]) -> None:
    """The ranges must run 0..layers-1 in order, each starting where the one before ends."""
    expected = 0
    for use, (first, last) in zip(uses, ranges, strict=True):
        if first != expected or last < first:
            wanted = f"starts at layer {expected}" if first != expected else "ends at or after its first layer"
            hint = f"write `{use.block} {expected}..{max(last, expected)}`"
            diags.append(error(f"the blocks must cover layers 0..{layers - 1} in order; `{use.block} {first}..{last}` is not: the next range {wanted}", use.span, hint=hint))
            return
        expected = last + 1
    if expected != layers:
        last_use = uses[-1]
        diags.append(
            error(
                f"the blocks cover layers 0..{expected - 1} but the model has {layers} layers (0..{layers - 1})",
                last_use.span,
                hint=f"end the last range at {layers - 1}, e.g. `{last_use.block} {ranges[-1][0]}..layers - 1`",
            )
        )


def _places(blocks: dict[str, Block | None], places: Sequence[Place], sequence_parallel: bool, diags: list[Diagnostic]) -> dict[str, Block] | None:
    """Each block with the places whose ops it defines; a place whose op no block defines is an error."""
    defined = {name: {op.name for op in block.ops} for name, block in blocks.items() if block is not None}
    for place in places:
        for target in place.targets:
            if not any(target.after in ops for ops in defined.values()):
                known = sorted(set().union(*defined.values()))
                hint = did_you_mean(target.after, known)
                diags.append(error(f"place: no block of the model has an op '{target.after}'", target.span, hint=hint))
    if any(d.is_error for d in diags):
        return None
    placed: dict[str, Block] = {}
    for name, block in blocks.items():
        assert block is not None  # the caller returns earlier otherwise
        mine = [replace(place, targets=tuple(t for t in place.targets if t.after in defined[name])) for place in places]
        result = _apply_places(block, [place for place in mine if place.targets], sequence_parallel, diags)
        if result is None:
            return None
        placed[name] = result
    return placed
