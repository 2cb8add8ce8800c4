"""The `serve` item's settings and the rules of a serving deployment (docs/language.md, Serving)."""

from __future__ import annotations

from typing import cast

from par.dsl.checks.deployment import Mesh, Model, Serve
from par.dsl.dag.types import Dtype
from par.dsl.diagnostics import Diagnostic, error, note
from par.dsl.frontend.source import Span
from par.dsl.frontend.spec import ServeDecl

SERVE_RANGES = {"prompt": (1, 1 << 26), "generate": (1, 1 << 26)}
KV_DTYPE = "kv_dtype"
SERVE_SETTINGS = (*SERVE_RANGES, KV_DTYPE)
# Mesh settings that say how training runs and mean nothing without a backward.
TRAINING_ONLY = {
    "grad_dtype": "gradients are accumulated and reduced in it, and serving computes none",
    "recompute": "it trades activations kept for the backward against forward FLOPs run again, and serving has no backward",
    "chunks": "the interleaved schedule orders forwards and backwards, and serving runs no backward",
}


def without_serve(name: str, span: Span) -> Diagnostic:
    """`-D prompt=…` on a spec that trains."""
    return error(
        f"-D {name} sets a serving setting, but the spec has no serve item: it trains",
        span,
        hint="add an item like: serve { prompt 2048  generate 256 }",
    )


def resolve_serve(
    decl: ServeDecl,
    values: dict[str, int],
    kv_dtype: str | None,
    model: Model,
    mesh: Mesh,
    spans: dict[str, Span],
    written: set[str],
) -> tuple[Serve | None, list[Diagnostic]]:
    """The serving settings, checked against the model and the mesh; every problem at once."""
    diags: list[Diagnostic] = []
    for name in SERVE_RANGES:
        if name not in values and name not in spans:
            what = "the tokens each sequence reads before it generates" if name == "prompt" else "the tokens each sequence generates"
            diags.append(error(f"serve does not set '{name}' ({what})", decl.span, hint="for example: serve { prompt 2048  generate 256 }"))
    for name, why in TRAINING_ONLY.items():
        if name in written:
            diags.append(error(f"{name} has no meaning in a serving spec: {why}", spans.get(name), hint=f"remove {name}, or remove the serve item to train"))
    if "schedule" in written:
        diags.append(note("schedule has no effect in a serving spec: there is no backward, each stage runs its microbatches of requests in turn", spans.get("schedule")))
    if model.moe is not None:
        diags.append(
            error(
                "par does not build serving DAGs for mixture-of-experts models yet (token routing in a decode step "
                "is left for later)",
                decl.span,
                hint="remove the serve item to train this model",
            )
        )
    if mesh.cp > 1:
        diags.append(
            error(
                f"par does not build serving DAGs under context parallelism yet (cp {mesh.cp}): the prefill's ring "
                "attention with a KV cache, and a decode step's one token per sequence, are left for later",
                spans.get("cp", decl.span),
                hint="remove cp to serve this model, or remove the serve item to train it",
            )
        )
    if any(name not in values for name in SERVE_RANGES):
        return None, diags
    prompt, generate = values["prompt"], values["generate"]
    context = prompt + generate
    if context > model.seq:
        diags.append(
            error(
                f"prompt ({prompt}) + generate ({generate}) = {context} positions, more than seq ({model.seq}): "
                "seq is the longest context a sequence reaches (its positions and its KV cache)",
                spans.get("generate"),
                hint=f"raise seq to {context} or more, or shorten the prompt or the generated tokens",
            )
        )
    if mesh.sequence_parallel:
        if prompt % mesh.tp:
            diags.append(
                error(
                    f"sp splits the prefill's prompt over tp, but prompt ({prompt}) is not divisible by tp ({mesh.tp})",
                    spans.get("prompt"),
                    hint=f"use a prompt that is a multiple of {mesh.tp}, or drop sp",
                )
            )
        diags.append(
            note(
                "sp applies to the prefill only: a decode step has one token per sequence, which cannot be split "
                "over tp, so the decode DAG runs without sequence parallelism",
                spans.get("sp"),
            )
        )
    if kv_dtype is None or any(d.is_error for d in diags):
        return None, diags
    return Serve(prompt, generate, cast(Dtype, kv_dtype)), diags
