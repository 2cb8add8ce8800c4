"""Semantic checks: a Spec and its -D overrides become a Deployment, or every diagnostic at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import cast

from par.dsl.checks import rope
from par.dsl.checks import stages as stage_split
from par.dsl.checks.blockcheck import resolve_block
from par.dsl.checks.crosscheck import cross_checks
from par.dsl.checks.deployment import (
    CP_ATTENTION,
    DTYPE_BYTES,
    GRAD_DTYPES,
    RECOMPUTE,
    ROPE_SCALINGS,
    SCHEDULES,
    Block,
    Deployment,
    Mesh,
    Model,
    Rope,
)
from par.dsl.checks.evaluate import (
    AlreadyReported,
    EvalError,
    Namespace,
    did_you_mean,
    evaluate,
)
from par.dsl.checks.experts import (
    EXPERT_NUMBERS,
    EXPERT_RANGES,
    EXPERT_WORDS,
    expert_checks,
    resolve_experts,
    used_without_experts,
)
from par.dsl.checks.experts import defaults as expert_defaults
from par.dsl.checks.hwcheck import resolve_hardware
from par.dsl.checks.interleave import INTERLEAVED, chunk_rules, even_chunks
from par.dsl.checks.layerblocks import resolve_layer_blocks
from par.dsl.checks.recompute import recompute_checks
from par.dsl.checks.serving import KV_DTYPE, SERVE_RANGES, SERVE_SETTINGS, resolve_serve, without_serve
from par.dsl.checks.settings import collect_settings
from par.dsl.checks.zero import ZERO, ZERO_HINT, zero_checks
from par.dsl.dag.types import Dtype, Recompute, Schedule
from par.dsl.diagnostics import CompileError, Diagnostic, error, note, warning
from par.dsl.frontend.library import library_blocks
from par.dsl.frontend.source import Span, stem
from par.dsl.frontend.spec import (
    BinOp,
    Expr,
    ModelDecl,
    Num,
    Override,
    Ref,
    Setting,
    Spec,
    StageSpec,
)

# Inclusive ranges; the upper bounds only keep absurd input away from later stages.
MODEL_RANGES = {
    "layers": (1, 100_000),
    "hidden": (1, 1 << 24),
    "heads": (1, 1 << 16),
    "kv_heads": (1, 1 << 16),
    "ffn": (1, 1 << 26),
    "vocab": (1, 1 << 24),
    "batch": (1, 1 << 24),
    "seq": (1, 1 << 26),
    rope.ORIGINAL_MAX_POSITIONS: (1, 1 << 26),
    "max_positions": (1, 1 << 26),
} | EXPERT_RANGES
MESH_RANGES = {
    "tp": (1, 1 << 16),
    "pp": (1, 1 << 16),
    "dp": (1, 1 << 16),
    "microbatches": (1, 1 << 20),
    "world": (1, 1 << 20),
    "ep": (1, 1 << 16),
    "etp": (1, 1 << 16),
    "cp": (1, 1 << 16),
    "chunks": (1, 1 << 16),
    "zero": (0, 3),
}
# Mesh items with their own grammar rule (grammar/par.lark: _mesh_item) beside the settings above.
MESH_KEYWORDS = ("schedule", "sp", "stages")
RANGES = MODEL_RANGES | MESH_RANGES | SERVE_RANGES
REQUIRED = ("layers", "hidden", "heads", "batch", "seq")
# The model's ends (docs/language.md, The model's ends): words, and what each needs.
END_WORDS = {
    "tie_embeddings": ("false", "true"),
    "positions": ("none", "learned"),
    "final_norm": ("layernorm", "rmsnorm"),
}
ENDS = (*END_WORDS, "max_positions")
WORDS = {"dtype": tuple(DTYPE_BYTES), KV_DTYPE: tuple(DTYPE_BYTES), "schedule": SCHEDULES, "grad_dtype": GRAD_DTYPES, "cp_attention": CP_ATTENTION, "recompute": RECOMPUTE, "rope_scaling": ROPE_SCALINGS} | END_WORDS | EXPERT_WORDS
# Model settings that take any positive number, not only whole ones.
REALS = ("norm_eps", *rope.REALS)
FLAGS = {"sp": "sequence_parallel", "strict": "strict"}
ON, OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
OVERRIDABLE = sorted(set(RANGES) | set(WORDS) | set(FLAGS) | set(REALS) | {"stages", *EXPERT_NUMBERS})


def check(spec: Spec, overrides: Sequence[Override] = ()) -> tuple[Deployment, list[Diagnostic]]:
    """Returns the deployment and its warnings; raises CompileError listing every error."""
    checker = _Checker(spec, overrides)
    deployment = checker.run()
    errors = [d for d in checker.diags if d.is_error]
    if errors or deployment is None:
        raise CompileError(checker.diags)
    return deployment, [d for d in checker.diags if not d.is_error]


class _Checker:
    def __init__(self, spec: Spec, overrides: Sequence[Override]):
        self.spec = spec
        self.overrides = list(overrides)
        self.diags: list[Diagnostic] = []
        self.values: dict[str, int] = {}
        self.spans: dict[str, Span] = {}
        self.defaulted: set[str] = set()  # settings the spec left out, given their default
        self.layer_blocks: tuple = ()  # `model m : a 0..2, b 3..9`: (first, last, Block) per range
        self.file_span = Span.point(spec.file)

    def err(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.diags.append(error(message, span or self.file_span, hint=hint))

    # -- top level -------------------------------------------------------------------------------

    def run(self) -> Deployment | None:
        spec = self.spec
        model_decl = self._single(spec.models, "model", required=True)
        mesh_decl = self._single(spec.meshes, "mesh")
        hardware_decl = self._single(spec.hardware, "hardware")
        serve_decl = self._single(spec.serves, "serve")
        if model_decl is None:
            return None
        exprs = self._collect(
            model_decl.settings,
            set(MODEL_RANGES) | set(REALS) | {"dtype", "rope_scaling", *EXPERT_NUMBERS, *END_WORDS} | set(EXPERT_WORDS),
            "model",
        )
        exprs |= self._collect(mesh_decl.settings if mesh_decl else (), set(MESH_RANGES) | {"grad_dtype", "cp_attention", "recompute"}, "mesh", MESH_KEYWORDS)
        exprs |= self._collect(serve_decl.settings if serve_decl else (), set(SERVE_SETTINGS), "serve")
        words = {name: exprs.pop(name, None) for name in ("dtype", "grad_dtype", "cp_attention", "recompute", "rope_scaling", KV_DTYPE, *END_WORDS, *EXPERT_WORDS)}
        stage_specs = mesh_decl.stages if mesh_decl else None
        flags = {
            "sp": bool(mesh_decl and mesh_decl.sequence_parallel),
            "strict": bool(spec.strict),
        }
        schedule = (mesh_decl.schedule, mesh_decl.schedule_span) if mesh_decl and mesh_decl.schedule else None
        self.spans["sp"] = mesh_decl.sp_span if mesh_decl and mesh_decl.sp_span else self.file_span
        if mesh_decl and mesh_decl.stages_span:
            self.spans["stages"] = mesh_decl.stages_span
        if schedule is not None:
            self.spans["schedule"] = schedule[1]
        for override in self.overrides:
            if override.name in SERVE_SETTINGS and serve_decl is None:
                self.diags.append(without_serve(override.name, override.span))
                continue
            applied = self._override(override, exprs, words, flags)
            if applied == "stages":
                stage_specs = override.value
                self.spans["stages"] = override.span
            elif applied == "schedule":
                schedule = (override.text, override.span)
                self.spans["schedule"] = override.span
        numbers = {name: expr for name in EXPERT_NUMBERS if (expr := exprs.pop(name, None)) is not None}
        written = {name for name in (*exprs, *(w for w, e in words.items() if e is not None))} | set(numbers)
        namespace = self._namespace(model_decl, mesh_decl, exprs)
        self._evaluate(namespace, model_decl)
        experts_words: dict[str, Expr] = {name: expr for name in EXPERT_WORDS if (expr := words[name]) is not None}
        experts_words |= numbers
        experts = resolve_experts(self.values, experts_words, written, self.spans, self.diags)
        dtype = cast(Dtype | None, self._word("dtype", words["dtype"], default="bf16"))  # one of DTYPE_BYTES
        schedule_name = self._schedule(schedule)
        grad_dtype = self._grad_dtype(words["grad_dtype"], dtype)
        model = self._model(model_decl, dtype, self._reals(namespace), words["rope_scaling"])
        if model is not None:
            model = replace(model, moe=experts)
        cp_attention = self._word("cp_attention", words["cp_attention"], default="ring")
        mesh = self._mesh(stage_specs, schedule_name, flags["sp"], grad_dtype, namespace, cp_attention)
        recompute = cast(Recompute | None, self._word("recompute", words["recompute"], default="none"))  # one of RECOMPUTE
        mesh = replace(mesh, recompute=recompute) if mesh is not None and recompute is not None else None
        self.diags.extend(cross_checks(self.values, sequence_parallel=flags["sp"], spans=self.spans))
        self.diags.extend(expert_checks(self.values, sequence_parallel=flags["sp"], spans=self.spans))
        self.diags.extend(zero_checks(self.values, serving=serve_decl is not None, spans=self.spans, defaulted=self.defaulted))
        block = self._block(model_decl, namespace, flags["sp"])
        if block is not None and mesh is not None:
            blocks = [block] + [b for _, _, b in self.layer_blocks]
            self.diags += recompute_checks(mesh, blocks, self.spans.get("recompute", self.file_span))
        if block is not None and not any(op.op == "rope" for each in [block] + [b for _, _, b in self.layer_blocks] for op in each.ops):
            self._unused_rope(block.name)
        if block is not None and experts is None and "experts" not in written:
            for each in [block] + [b for _, _, b in self.layer_blocks]:
                used_without_experts(each, self.diags, model_decl.name)
        hardware = resolve_hardware(hardware_decl, self.diags) if hardware_decl else None
        serve = None
        if serve_decl is not None and model is not None and mesh is not None:
            kv_dtype = self._word(KV_DTYPE, words[KV_DTYPE], default=model.dtype)
            written_here = written | ({"schedule"} if schedule is not None else set())
            serve, found = resolve_serve(serve_decl, self.values, kv_dtype, model, mesh, self.spans, written_here)
            self.diags += found
        if model is None or mesh is None or block is None or any(d.is_error for d in self.diags):
            return None
        model = self._ends(replace(model, block=block.name), words, block, mesh)
        if model is None:
            return None
        return Deployment(
            file=spec.file,
            name=stem(spec.file),
            model=model,
            mesh=mesh,
            block=block,
            strict=flags["strict"],
            hardware=hardware,
            spans=dict(self.spans),
            layer_blocks=self.layer_blocks,
            serve=serve,
        )

    def _single(self, items, what: str, required: bool = False):
        if not items:
            if required and not self._maybe_broken(what):
                self.err(f"the spec has no {what}", self.file_span, hint=f"add a line like: {_EXAMPLES[what]}")
            return None
        for extra in items[1:]:
            self.err(f"a spec has one {what}; this is a second one (the first is at {items[0].span})", extra.span)
        return items[0]

    def _maybe_broken(self, kind: str) -> bool:
        """Whether an item of this kind may be in text that did not parse."""
        return kind in self.spec.broken or None in self.spec.broken

    def _collect(
        self, settings: Sequence[Setting], allowed: set[str], where: str, keywords: Sequence[str] = ()
    ) -> dict[str, Expr]:
        found, diags = collect_settings(settings, allowed, where, keywords)
        self.diags += diags
        self.spans.update((name, setting.value.span) for name, setting in found.items())
        return {name: setting.value for name, setting in found.items()}

    def _override(self, override: Override, exprs: dict, words: dict, flags: dict) -> str | None:
        name = override.name
        if name not in OVERRIDABLE:
            hint = did_you_mean(name, OVERRIDABLE) or f"-D accepts: {', '.join(OVERRIDABLE)}"
            self.err(f"-D: unknown setting '{name}'", override.span, hint)
            return None
        if name in FLAGS:
            text = override.text.strip().lower()
            if text not in ON + OFF:
                self.err(f"-D {name} takes on or off, not '{override.text}'", override.span)
                return None
            flags[name] = text in ON
            self.spans[name] = override.span
            return name
        if name == "schedule":
            return name
        if override.error is not None:
            self.diags.append(override.error)
            return None
        if name == "stages":
            return name
        value = override.value
        if len(value) != 1 or value[0].last is not None:
            self.err(f"-D {name} takes a single value", override.span)
            return None
        target = words if name in WORDS else exprs
        target[name] = value[0].first
        self.spans[name] = override.span
        return name

    # -- numbers ---------------------------------------------------------------------------------

    def _namespace(self, model_decl: ModelDecl, mesh_decl, exprs: dict[str, Expr]) -> Namespace:
        at = model_decl.span
        mesh_at = mesh_decl.span if mesh_decl else at
        defaults: dict[str, Expr] = {
            **expert_defaults(at),
            "kv_heads": Ref("heads", at),
            "ffn": BinOp("*", Num(4, at), Ref("hidden", at), at),
            "tp": Num(1, mesh_at),
            "pp": Num(1, mesh_at),
            "dp": Num(1, mesh_at),
            "microbatches": Num(1, mesh_at),
            "head_dim": BinOp("/", Ref("hidden", at), Ref("heads", at), at),
            "ep": Num(1, mesh_at),
            "etp": Ref("tp", mesh_at),
            "cp": Num(1, mesh_at),
            "chunks": Num(1, mesh_at),
            "zero": Num(0, mesh_at),
        }
        for name, expr in defaults.items():
            if name not in exprs:
                exprs[name] = expr
                self.spans.setdefault(name, expr.span)
                self.defaulted.add(name)
        return Namespace(exprs, accept=self._accept)

    def _evaluate(self, namespace: Namespace, model_decl: ModelDecl) -> None:
        for name in sorted(RANGES):
            if name not in namespace.names():
                if name in REQUIRED:
                    self.err(f"model '{model_decl.name}' does not set '{name}'", model_decl.span)
                continue
            value = self._integer(namespace, name)
            if value is not None:
                self.values[name] = value

    def _integer(self, namespace: Namespace, name: str) -> int | None:
        try:
            return cast(int, namespace.get(name))  # `_accept` made it a whole number
        except EvalError as exc:
            self.diags.append(exc.diagnostic)
        except AlreadyReported:
            pass
        return None

    def _accept(self, name: str, value):
        """Hands the namespace a setting's value once it is known to be in range, so that a bad
        setting is reported once, at its own line, and whatever uses it (a derived default, a
        size in a block) stays quiet instead of failing again somewhere else."""
        if name not in RANGES:
            return value
        span = self.spans.get(name)
        if isinstance(value, float):
            if not value.is_integer():
                raise EvalError(error(f"{name} must be a whole number, not {value:g}", span or self.file_span))
            value = int(value)
        low, high = RANGES[name]
        if name == ZERO and not low <= value <= high:
            raise EvalError(error(f"zero must be 0, 1, 2 or 3 (the ZeRO stage), not {value}", span or self.file_span, hint=ZERO_HINT))
        if value < low:
            raise EvalError(error(f"{name} must be at least {low}, not {value}", span or self.file_span))
        if value > high:
            raise EvalError(error(f"{name} ({value}) is absurdly large; the most par accepts is {high}", span or self.file_span))
        return value

    def _reals(self, namespace: Namespace) -> dict[str, float] | None:
        """The real-valued settings the spec sets, each positive; None if one is not."""
        found: dict[str, float] = {}
        ok = True
        for name in REALS:
            if name not in namespace.names():
                continue
            try:
                value = float(namespace.get(name))
            except EvalError as exc:
                self.diags.append(exc.diagnostic)
                ok = False
                continue
            except AlreadyReported:
                ok = False
                continue
            span = self.spans.get(name)
            if value <= 0:
                self.err(f"{name} must be positive, not {value:g}", span)
                ok = False
            elif name == "norm_eps" and value >= 1:
                self.err(f"norm_eps ({value:g}) must be below 1: a norm adds it to the variance it divides by", span)
                ok = False
            found[name] = value
        return found if ok else None

    def _rope(self, reals: dict[str, float], scaling: str, scaling_expr: Expr | None) -> Rope | None:
        numbers: dict[str, float | int] = {name: value for name, value in reals.items() if name.startswith("rope_")}
        if rope.ORIGINAL_MAX_POSITIONS in self.values:
            numbers[rope.ORIGINAL_MAX_POSITIONS] = self.values[rope.ORIGINAL_MAX_POSITIONS]
        elif rope.ORIGINAL_MAX_POSITIONS in self.spans:
            return None  # its own error is reported
        span = scaling_expr.span if scaling_expr is not None else self.file_span
        found, diags = rope.rope_settings(scaling, numbers, self.spans, span)
        self.diags += diags
        return found

    def _unused_rope(self, block: str) -> None:
        """A rope setting of a block without rope changes nothing: said, not silently ignored."""
        for name in ("rope_scaling", *rope.REALS, rope.ORIGINAL_MAX_POSITIONS):
            if name in self.spans:
                hint = "remove it, or use a block with rope(qkv) (llama, qwen2)"
                self.diags.append(warning(f"{name} has no effect: block '{block}' has no rope", self.spans[name], hint=hint))

    def _word(self, name: str, expr: Expr | None, default: str) -> str | None:
        if expr is None:
            return default
        options = WORDS[name]
        if isinstance(expr, Ref) and expr.name in options:
            return expr.name
        shown = expr.name if isinstance(expr, Ref) else "a number"
        self.err(f"{name} must be one of {', '.join(options)}, not {shown}", expr.span, did_you_mean(shown, options))
        return None

    def _grad_dtype(self, expr: Expr | None, dtype: Dtype | None) -> Dtype | None:
        """What gradients are accumulated and reduced in: fp32 (the default) or the model's dtype,
        written `model` or by its name."""
        if expr is None or dtype is None:
            return "fp32" if dtype else None
        accepted = (*GRAD_DTYPES, dtype)
        if isinstance(expr, Ref) and expr.name in accepted:
            return "fp32" if expr.name == "fp32" else dtype
        shown = expr.name if isinstance(expr, Ref) else "a number"
        message = f"grad_dtype must be fp32 or model (the model's dtype, {dtype}), not {shown}"
        self.err(message, expr.span, did_you_mean(shown, accepted))
        return None

    def _schedule(self, schedule: tuple[str, Span] | None) -> Schedule | None:
        if schedule is None:
            return "1f1b"
        name, span = schedule
        if name.lower() in SCHEDULES:
            return cast(Schedule, name.lower())
        self.err(f"unknown schedule '{name}'; use {' or '.join(SCHEDULES)}", span)
        return None

    # -- model and mesh --------------------------------------------------------------------------

    def _model(
        self, model_decl: ModelDecl, dtype: Dtype | None, reals: dict[str, float] | None, rope_scaling: Expr | None
    ) -> Model | None:
        v = self.values
        scaling = self._word("rope_scaling", rope_scaling, default="none")
        rotary = self._rope(reals, scaling, rope_scaling) if reals is not None and scaling is not None else None
        if dtype is None or rotary is None or reals is None or any(name not in v for name in REQUIRED + ("kv_heads", "ffn")):
            return None
        return Model(
            name=model_decl.name,
            block=model_decl.block or "",
            layers=v["layers"],
            hidden=v["hidden"],
            heads=v["heads"],
            kv_heads=v["kv_heads"],
            ffn=v["ffn"],
            vocab=v.get("vocab"),
            batch=v["batch"],
            seq=v["seq"],
            dtype=dtype,
            norm_eps=reals.get("norm_eps", 1e-5),
            rope=rotary,
        )

    def _ends(self, model: Model, words: dict[str, Expr | None], block: Block, mesh: Mesh) -> Model | None:
        """The settings of the model's ends: each needs `vocab`; learned positions need a row per position."""
        first_norm = next((op.op for op in block.ops if op.op in END_WORDS["final_norm"]), "layernorm")
        chosen = {
            name: self._word(name, words[name], default)
            for name, default in (("tie_embeddings", "false"), ("positions", "none"), ("final_norm", first_norm))
        }
        if any(value is None for value in chosen.values()):
            return None
        if model.vocab is None:
            for name in ENDS:
                if name in self.spans and (name != "max_positions" or name in self.values):
                    self.err(
                        f"{name} needs vocab: without it the model has no embedding, head or loss",
                        self.spans[name],
                        "set vocab",
                    )
            return None if any(d.is_error for d in self.diags) else model
        padded = model.padded_vocab(mesh.tp)
        if padded != model.vocab:
            rows = padded - model.vocab
            self.diags.append(
                note(
                    f"vocab {model.vocab} padded to {padded} for tp {mesh.tp} ({rows} row{'s' * (rows > 1)})",
                    self.spans.get("vocab"),
                )
            )
        max_positions = self.values.get("max_positions", model.seq)
        if chosen["positions"] == "learned" and max_positions < model.seq:
            message = f"max_positions ({max_positions}) is less than seq ({model.seq}): position {max_positions} has no learned row"
            self.err(message, self.spans.get("max_positions"), f"use max_positions {model.seq} or more")
            return None
        return replace(
            model,
            tie_embeddings=chosen["tie_embeddings"] == "true",
            positions=cast(str, chosen["positions"]),
            max_positions=max_positions,
            final_norm=cast(str, chosen["final_norm"]),
        )

    def _mesh(
        self, stage_specs, schedule: Schedule | None, sp: bool, grad_dtype: Dtype | None, namespace: Namespace, cp_attention: str | None
    ) -> Mesh | None:
        v = self.values
        required = ("tp", "pp", "dp", "microbatches", "layers", "ep", "cp", "chunks", ZERO)
        if schedule is None or grad_dtype is None or cp_attention is None or any(name not in v for name in required):
            return None
        rules = chunk_rules(
            schedule=schedule, chunks=v["chunks"], chunks_written="chunks" not in self.defaulted, pp=v["pp"], microbatches=v["microbatches"], spans=self.spans
        )
        self.diags += rules
        if rules:
            return None
        chunks = v["chunks"] if schedule == INTERLEAVED else 1
        if chunks > 1 and stage_specs is None:
            ranges, found = even_chunks(v["layers"], v["pp"] * chunks, self.spans)
            self.diags += found
        else:
            ranges = self._stages(stage_specs, v["layers"], v["pp"], namespace, chunks)
        if ranges is None:
            return None
        if v["cp"] == 1 and "cp_attention" in self.spans:
            self.diags.append(warning("cp_attention has no effect: cp is 1", self.spans["cp_attention"], hint="set cp 2 or more, or remove it"))
        return Mesh(
            v["tp"], v["pp"], v["dp"], v["microbatches"], ranges, schedule, sp, grad_dtype, ep=v["ep"], cp=v["cp"], cp_attention=cp_attention, chunks=chunks, zero=v[ZERO]
        )

    def _stages(self, specs: Sequence[StageSpec] | None, layers: int, pp: int, namespace: Namespace, chunks: int = 1):
        """The (first, last) layers of each stage; interleaved (`chunks` > 1), of each model chunk."""
        if specs is None:
            if pp > layers:
                self.err(
                    f"pp ({pp}) is more than layers ({layers}): a stage would hold no layer",
                    self.spans.get("pp"),
                    f"use pp {layers} or fewer, or more layers",
                )
                return None
            return stage_split.even_split(layers, pp)
        span = self.spans.get("stages")
        if chunks > 1 and len(specs) != pp * chunks:
            self.err(f"stages lists {len(specs)} entries but pp × chunks is {pp * chunks}: interleaved, it gives each model chunk's layers", span, f"give {pp * chunks} entries, chunk k running on stage k mod {pp}")
            return None
        if chunks == 1 and len(specs) != pp:
            self.err(f"stages lists {len(specs)} stages but pp is {pp}", span, f"give {pp} entries or set pp {len(specs)}")
            return None
        kinds = {spec.last is None for spec in specs}
        if len(kinds) > 1:
            self.err("stages mixes layer counts and layer ranges; use one or the other", span)
            return None
        found = [[self._stage_number(e, namespace) for e in (s.first, s.last) if e is not None] for s in specs]
        if any(n is None for entry in found for n in entry):
            return None
        numbers = cast(list[list[int]], found)
        if kinds == {True}:
            counts = [entry[0] for entry in numbers]
            if any(c < 1 for c in counts) or sum(counts) != layers:
                empty = [str(i) for i, c in enumerate(counts) if c < 1]
                detail = f"stage {', '.join(empty)} would hold no layer" if empty else f"they add up to {sum(counts)}"
                self.err(f"stages {counts} do not split {layers} layers: {detail}", span, _split_hint(layers, pp * chunks))
                return None
            return stage_split.from_counts(counts)
        ranges = [(entry[0], entry[1]) for entry in numbers]
        problems = stage_split.coverage_problems(ranges, layers)
        for problem in problems:
            self.err(f"stages do not place each of the {layers} layers on exactly one stage: {problem}", span)
        return None if problems else tuple(ranges)

    def _stage_number(self, expr: Expr, namespace: Namespace) -> int | None:
        try:
            value = evaluate(expr, namespace.lookup)
        except EvalError as exc:
            self.diags.append(exc.diagnostic)
            return None
        except AlreadyReported:
            return None
        if not isinstance(value, int) and not float(value).is_integer():
            self.err(f"a stage entry must be a whole number, not {value:g}", expr.span)
            return None
        return int(value)

    def _block(self, model_decl: ModelDecl, namespace: Namespace, sp: bool):
        def blame(diagnostic: Diagnostic, size: Expr, block: str) -> None:
            self._blame(diagnostic, size, block, namespace, model_decl)

        if model_decl.layer_uses:
            layer_blocks, diags = resolve_layer_blocks(
                model_decl=model_decl,
                spec_blocks=self.spec.blocks,
                library_blocks=library_blocks(),
                places=self.spec.places,
                namespace=namespace,
                layers=self.values.get("layers"),
                sequence_parallel=sp,
                blocks_broken=self._maybe_broken("block"),
                blame=blame,
            )
            self.diags.extend(diags)
            self.layer_blocks = layer_blocks or ()
            return layer_blocks[0][2] if layer_blocks else None

        block, diags = resolve_block(
            model_decl=model_decl,
            spec_blocks=self.spec.blocks,
            library_blocks=library_blocks(),
            places=self.spec.places,
            namespace=namespace,
            sequence_parallel=sp,
            blocks_broken=self._maybe_broken("block"),
            blame=blame,
        )
        self.diags.extend(diags)
        return block

    def _blame(self, diagnostic: Diagnostic, size: Expr, block: str, namespace: Namespace, model_decl: ModelDecl) -> None:
        """A size in a built-in block fails for these settings. The user never wrote that line:
        the error goes on the settings the size reads (the first written), the block's line
        becomes a note. When one of those settings has an error already (a divisibility rule
        says the same in the user's terms), or another size failed the same way, that error
        only gains the note: one bad setting, one error."""
        here = note(f"used here, by the built-in block '{block}'", size.span)
        read = namespace.depends_on(size)
        spans = sorted({self.spans[name] for name in read if name in self.spans and name not in self.defaulted})
        at = spans[0] if spans else model_decl.block_span or model_decl.span
        message = f"{diagnostic.message} (in the built-in block '{block}')"
        for index, known in enumerate(self.diags):
            if known.is_error and (known.span in spans or (known.span, known.message) == (at, message)):
                self.diags[index] = replace(known, notes=known.notes + (here,))
                return
        self.diags.append(replace(error(message, at, hint=diagnostic.hint), notes=(here,)))


_EXAMPLES = {
    "model": "model gpt16 : gpt { layers 16  hidden 4096  heads 32  batch 8  seq 2048 }",
    "mesh": "mesh { tp 8  pp 2 }",
    "hardware": "hardware h100",
    "serve": "serve { prompt 2048  generate 256 }",
}


def _split_hint(layers: int, pp: int) -> str:
    if pp > layers:
        return "use fewer stages"
    return f"for example stages {stage_split.even_counts(layers, pp)}"

