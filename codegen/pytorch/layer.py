"""The forward of one layer on one tensor-parallel rank: the Program's steps, in its order.

Three decisions turn steps into code:

* Gradients. Each collective and slice is carried by the forward/backward pair the compiler
  chose for its step (`par.dsl.lowering.backward`, which says why; docs/cost.md counts the same pairs;
  an AllGather whose gradient is zero outside each rank's part keeps that part, `all_gather`), and
  a value the compiler marks `copied` (or the layer input) enters column-parallel linears
  through `copy_to_tp`, once per value.
* Fused QKV layout. Every tensor whose features are fused Q, K, V (those feeding attention)
  is in one of three layouts: `standard` ([Q heads | K heads | V heads]), `grouped` (one
  [q | k | v] block per tensor-parallel rank, as an AllGather of head-sharded QKV leaves it)
  or `local` (this rank's block). Weights are split per head; attention reads grouped input
  as it is; where a consumer needs another layout, a local reordering is inserted.
* Parameters of ops that see only this rank's part of the sequence (norms under sequence
  parallelism) get partial gradients, summed over the tensor-parallel group after backward.
* Mixture of experts. The router's value is a `Routing` (runtime/experts.py): the top-k choice
  and weights, and the split sizes its dispatch learns; every step between `permute` and
  `unpermute` (the dispatch, the local experts, the combine) reads the routing of its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from par.codegen.pytorch.names import Names
from par.codegen.pytorch.ops import (
    ELEMENTWISE,
    NORM_PARAMETERS,
    NORMS,
    LayerCode,
    Line,
    Submodule,
    attention_call,
    linear_module,
    norm,
    size,
)
from par.dsl.dag import ids
from par.dsl.lowering.placement import S_LAST, S_SEQ
from par.dsl.lowering.program import Program, Step
from par.dsl.registry.ops import COMPUTE_OPS
from par.dsl.registry.statements import WRITTEN

FEATURES = S_LAST.dim
# model.py's activations are sequence-first, [seq, batch, features] (Megatron's layout), where the
# DAG's shapes are [batch, seq, features]: a split along the sequence is along model.py's dim 0,
# so that sequence-parallel AllGathers and ReduceScatters move contiguous parts, with no copy.
CODE_DIMS = {S_SEQ.dim: 0, S_LAST.dim: S_LAST.dim}
GROUP = "self.tp_group"
# Ops across which a tensor keeps its feature layout (a fused QKV stays fused QKV).
_SAME_FEATURES = set(ELEMENTWISE) | set(NORMS) | set(WRITTEN) | {"slice", "rope"}
# Ops that read fused Q, K, V heads: their inputs are fused QKV, whatever feeds them.
_READ_HEADS = {"attention", "rope"}


# How an expert's weight splits over the tensor-parallel ranks, by its linear's style (the
# experts themselves split over the expert-parallel group: runtime/sharding.py, EXPERTS_SPLIT).
_EXPERT_SPLITS = {"column": "rows", "row": "columns", "replicated": "replicated"}


@dataclass(frozen=True, slots=True)
class ShardedLayer:
    """The sharded layer's code and what the rest of model.py needs to know of it."""

    code: LayerCode
    helpers: frozenset[str]  # module-level functions the forward calls
    sharding: tuple[tuple[str, str], ...]  # (parameter, how it splits over tensor-parallel ranks)
    partial_gradients: tuple[str, ...]  # parameters whose gradient is summed over the tp group
    expert_gradients: tuple[str, ...]  # the local experts' weights: reduced over the ranks holding the same experts
    uses_tp_rank: bool  # the forward slices locally by the rank's tensor-parallel index
    linear_classes: frozenset[str]  # the tensor-parallel linear modules the layer uses
    by_head: bool  # some weight is split per head of a fused QKV (shard_parameter regroups it)
    cache_heads: str  # the KV heads of this rank's KV cache, as model.py writes them ("0": no attention)


def sharded_layer(program: Program, cached: bool = False) -> ShardedLayer:
    """The layer's forward; `cached`: attention and rope take generation's KV cache (`cache`)."""
    return _Writer(program, cached).run()


def fused_qkv_values(steps: tuple[Step, ...]) -> set[str]:
    """Values whose features are fused Q, K, V: attention and rope inputs and all they share features with."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for step in steps:
        if step.op in _SAME_FEATURES:
            for value in step.inputs:
                parent[find(value)] = find(step.name)
    roots = {find(step.inputs[0]) for step in steps if step.op in _READ_HEADS}
    names = {name for step in steps for name in (step.name, *step.inputs)}
    return {name for name in names if find(name) in roots}


class _Writer:
    def __init__(self, program: Program, cached: bool):
        self.program = program
        self.cached = cached
        self.cache_heads = "0"
        self.model = program.deployment.model
        self.mesh = program.deployment.mesh
        self.tp = self.mesh.tp
        self.names = Names()
        for name in (program.param, *(step.name for step in program.steps)):
            self.names.of(name)
        self.copied = {step.name for step in program.steps if step.copied}
        if program.param_copied:
            self.copied.add(program.param)
        self.fused = fused_qkv_values(program.steps) if self.tp > 1 else set()
        self.layout: dict[str, str] = {}
        self.held: dict[tuple[str, str], str] = {}  # (Python name, form) -> Python name of the converted value
        self.lines: list[Line] = []
        self.submodules: list[Submodule] = []
        self.helpers: set[str] = set()
        self.classes: set[str] = set()
        self.sharding: list[tuple[str, str]] = []
        self.partial: list[str] = []
        self.uses_tp_rank = False
        self.by_head = False
        self.experts: list[str] = []
        self.routing: dict[str, str] = {}  # value -> the router's value that routed its tokens

    def run(self) -> ShardedLayer:
        for step in self.program.steps:
            self._note_routing(step)
            {"comm": self._collective, "route": self._slice, "compute": self._compute}[step.kind](step)
        code = LayerCode(
            self.names.of(self.program.param),
            self.names.of(self.program.result),
            tuple(self.submodules),
            tuple(self.lines),
        )
        return ShardedLayer(
            code,
            frozenset(self.helpers),
            tuple(self.sharding),
            tuple(self.partial),
            tuple(self.experts),
            self.uses_tp_rank,
            frozenset(self.classes),
            self.by_head,
            self.cache_heads,
        )

    # -- operands ----------------------------------------------------------------------------------

    def _name(self, value: str) -> str:
        return self.names.of(value)

    def _convert(self, source: str, form: str, expression: str, comment: str) -> str:
        """`source_form = expression`, emitted the first time it is needed; its Python name."""
        key = (source, form)
        if key not in self.held:
            self.held[key] = self.names.fresh(f"{source}_{form}")
            self.lines.append(Line(self.held[key], expression, comment))
        return self.held[key]

    def _reordered(self, value: str, source: str, want: str) -> str:
        """`source` (which holds `value`) with fused QKV features in layout `want`: standard | grouped."""
        have = self.layout.get(value)
        if have not in ("standard", "grouped") or have == want:
            return source
        helper = "ungroup_heads" if want == "standard" else "group_heads"
        self.helpers.add(helper)
        return self._convert(source, want, f"{helper}({source}, dim=-1)", "local reordering, no communication")

    def _copied(self, value: str) -> str:
        """`value`, through `copy_to_tp` where the compiler says so (`Step.copied`)."""
        source = self._name(value)
        if value not in self.copied:
            return source
        self.helpers.add("copy_to_tp")
        comment = "backward: AllReduce of the input gradient"
        return self._convert(source, "tp", f"copy_to_tp({source}, {GROUP})", comment)

    def _standard(self, value: str) -> str:
        return self._reordered(value, self._name(value), "standard")

    # -- steps -------------------------------------------------------------------------------------

    def _emit(self, step: Step, expression: str, comment: str = "", layout: str | None = None) -> None:
        self.lines.append(Line(self._name(step.name), expression, comment))
        if step.name in self.fused and layout is not None:
            self.layout[step.name] = layout

    def _note_routing(self, step: Step) -> None:
        """Records which router's routing the step's output tokens follow (from permute to unpermute)."""
        if step.op == "permute":
            self.routing[step.name] = step.inputs[1]
        elif step.op != "unpermute":
            found = next((self.routing[value] for value in step.inputs if value in self.routing), None)
            if found is not None:
                self.routing[step.name] = found

    def _routing_of(self, step: Step) -> str:
        """The Python name of the routing of the tokens the step reads."""
        if step.op in ("permute", "unpermute"):
            return self._name(step.inputs[1])
        return self._name(next(self.routing[value] for value in step.inputs if value in self.routing))

    def _collective(self, step: Step) -> None:
        value = step.inputs[0]
        if step.op in ("dispatch", "combine"):
            self.helpers.add(step.op)
            operand = self._copied(value) if step.op == "dispatch" else self._name(value)
            groups = self.mesh.dp // self.mesh.ep
            node = ids.routing_id("<i>", step.name, "<g>", groups, "<t>", self.tp)
            comment = f"DAG: {node}" + ("" if step.inserted else " (written in the spec)")
            self._emit(step, f"{step.op}({operand}, {self._routing_of(step)}, self.ep_group)", comment)
            return
        source, target = step.in_placement, step.out_placement
        layout = self.layout.get(value)
        node = ids.collective_id("<i>", step.name, "<d>", self.mesh.dp)
        comment = f"DAG: {node}" + ("" if step.inserted else " (written in the spec)")
        if step.backward_reason is not None:
            comment += "; backward: this rank's part, no ReduceScatter"  # the rest of the gradient is zero
        helper = step.pair
        assert helper is not None  # lowering pairs every collective
        if step.op == "allreduce":
            call = f"{helper}({self._name(value)}, {GROUP})"
        elif step.op == "allgather":
            call = f"{helper}({self._name(value)}, dim={CODE_DIMS[source.dim]}, group={GROUP})"
            layout = "grouped" if source.dim == FEATURES else layout
        elif step.op == "reducescatter":
            operand = self._features_split(value, self._name(value), target.dim)
            call = f"{helper}({operand}, dim={CODE_DIMS[target.dim]}, group={GROUP})"
            layout = "local" if target.dim == FEATURES else layout
        else:
            operand = self._features_split(value, self._name(value), target.dim)
            call = f"{helper}({operand}, scatter_dim={CODE_DIMS[target.dim]}, gather_dim={CODE_DIMS[source.dim]}, group={GROUP})"
            layout = "local" if target.dim == FEATURES else "grouped" if source.dim == FEATURES else layout
        self.helpers.add(helper)
        self._emit(step, call, comment, layout)

    def _slice(self, step: Step) -> None:
        value, dim = step.inputs[0], step.out_placement.dim
        comment = f"DAG: {ids.compute_id('<i>', step.name, '<rank>')}"
        if step.pair is None:  # a local slice: the partial gradient is reduced upstream
            operand = self._features_split(value, self._copied(value), dim)
            call = f"{operand}.chunk(TP, dim={CODE_DIMS[dim]})[self.tp_rank]"
            if step.clone:  # kept for backward: a copy, so that the whole source is freed
                call += ".clone()"
            self.uses_tp_rank = True
        else:
            operand = self._features_split(value, self._name(value), dim)
            self.helpers.add(step.pair)
            call = f"{step.pair}({operand}, dim={CODE_DIMS[dim]}, group={GROUP})"
        layout = "local" if dim == FEATURES else self.layout.get(value)
        self._emit(step, call, comment, layout)

    def _features_split(self, value: str, source: str, dim: int | None) -> str:
        """What to split along `dim` so that each rank gets whole heads of a fused QKV."""
        return self._reordered(value, source, "grouped") if dim == FEATURES else source

    def _compute(self, step: Step) -> None:
        if step.op in NORMS:
            parameters = [(name, "replicated") for name in NORM_PARAMETERS[step.op]]
            self._module(step, norm(step.op, step.global_in[-1], self.model), parameters)
            self._emit(step, f"self.{self._name(step.name)}({self._standard(step.inputs[0])})", layout="standard")
        elif step.op == "linear":
            self._linear(step)
        elif step.op in _READ_HEADS:
            self._heads(step)
        elif step.op in ("router", "permute", "expert_linear", "unpermute"):
            self._experts(step)
        else:
            operands, layout = self._elementwise_operands(step)
            self._emit(step, ELEMENTWISE[step.op].format(*operands), layout=layout)

    def _module(self, step: Step, constructor: str, parameters: list[tuple[str, str]], comment: str = "") -> None:
        attribute = self._name(step.name)
        self.submodules.append(Submodule(attribute, constructor, comment))
        self.sharding.extend((f"{attribute}.{name}", split) for name, split in parameters)
        if step.in_placement == S_SEQ:
            self.partial.extend(f"{attribute}.{name}" for name, split in parameters if split == "replicated")

    def _parallel_module(self, step: Step, cls: str, sizes: str, splits: tuple[str, str], comment: str) -> None:
        """`splits`: how the weight and the bias (if the step has one) split over the ranks."""
        self.classes.add(cls)
        weight, bias = splits
        if weight.endswith("by head"):
            self.by_head = True
            self.helpers.add("group_heads")  # shard_parameter regroups the full weight
        parameters = [("weight", weight)] + ([("bias", bias)] if step.bias else [])
        self._module(step, f"{cls}({sizes})", parameters, comment)

    def _linear(self, step: Step) -> None:
        sizes = f"{size(step.global_in[-1], self.model)}, {size(step.global_out[-1], self.model)}"
        value = step.inputs[0]
        style = step.style if self.tp > 1 else "replicated"
        if style == "column":
            by_head = step.name in self.fused
            split = "rows by head" if by_head else "rows"  # the bias splits like the output
            comment = "fused Q, K, V: this rank's heads of each" if by_head else ""
            self._parallel_module(step, "ColumnParallelLinear", sizes + (", bias=True" if step.bias else ""), (split, split), comment)
            operand = self._reordered(value, self._copied(value), "standard")
            self._emit(step, f"self.{self._name(step.name)}({operand})", layout="local")
        elif style == "row":
            split = "columns by head" if value in self.fused else "columns"
            if step.bias:  # added by one rank to its partial sum: its gradient is summed over the group
                sizes += ", bias=True, adds_bias=groups.tp_rank == 0"
                self.partial.append(f"{self._name(step.name)}.bias")
            comment = "output is a partial sum (P)" + ("; rank 0 adds the bias" if step.bias else "")
            self._parallel_module(step, "RowParallelLinear", sizes, (split, "replicated"), comment)
            self._emit(step, f"self.{self._name(step.name)}({self._name(value)})", layout="standard")
        else:
            constructor = linear_module(step.global_in[-1], step.global_out[-1], step.bias, self.model)
            self._module(step, constructor, [("weight", "replicated")] + ([("bias", "replicated")] if step.bias else []))
            self._emit(step, f"self.{self._name(step.name)}({self._standard(value)})", layout="standard")

    def _heads(self, step: Step) -> None:
        """Attention or rope: over this rank's heads (S(-1)), or all heads in their layout (R)."""
        value = step.inputs[0]
        function = "causal_attention" if step.op == "attention" else "rotary_embedding"
        if step.in_placement.kind == "S":
            heads, kv_heads, groups = "HEADS // TP", "KV_HEADS // TP", ""
            comment = "this rank's heads"
        else:
            grouped = self.layout.get(value) == "grouped"
            heads, kv_heads, groups = "HEADS", "KV_HEADS", "TP" if grouped else ""
            comment = "all heads" + (", one [q | k | v] block per rank" if grouped else "")
        if step.op == "attention":
            self.cache_heads = kv_heads if self.tp > 1 else "KV_HEADS"
        cached, more = self.cached, ""
        if self.mesh.cp > 1:  # this rank's part of the sequence: its positions, and attention over the ring
            cached = False  # generation is not written under context parallelism
            if step.op == "attention":
                function, more = "context_attention", "mesh=self.mesh"
                kind = "ring steps, sends, recvs, attn_merge" if self.mesh.cp_attention == "ring" else "AllGather of K and V"
                comment = f"{comment}; " if self.tp > 1 else ""
                comment += f"DAG: layer_<i>_{step.name}'s {kind}"
            else:
                more = "cp_rank=self.mesh.cp_rank"
        # selective recomputation: the attention core runs again in backward, keeping only its input
        recompute = COMPUTE_OPS[step.op].selective and self.mesh.recompute == "selective"
        call = attention_call(
            self._name(value), heads=heads, kv_heads=kv_heads, groups=groups, function=function, cache=cached, more=more,
            recompute=recompute,
        )
        # rope keeps the layout of the fused QKV it turns; attention's output is per head, not QKV
        layout = self.layout.get(value) if step.op == "rope" else None
        self._emit(step, call, comment if self.tp > 1 or (self.mesh.cp > 1 and step.op == "attention") else "", layout)

    def _experts(self, step: Step) -> None:
        """The mixture-of-experts ops over the tokens of one routing (runtime/experts.py)."""
        value = step.inputs[0]
        if step.op == "router":
            constructor = f"nn.Linear({size(step.global_in[-1], self.model)}, EXPERTS, bias=False)"
            self._module(step, constructor, [("weight", "replicated")])
            logits = f"self.{self._name(step.name)}({self._standard(value)})"
            copied = step.name in self.copied
            if copied:  # the weights meet partial results: their gradient is partial
                self.helpers.add("copy_to_tp")
                logits = f"copy_to_tp({logits}, {GROUP})"
            if self.model.moe is not None and self.model.moe.router_aux_loss_coef:
                # each microbatch's share of the step's loss; over tp, each rank's share of the AllReduced gradient
                logits += ", scale=1 / (MICROBATCHES * TP)" if copied else ", scale=1 / MICROBATCHES"
            self._emit(step, f"route({logits})", "the top-k choice and weights")
            return
        routing = self._routing_of(step)
        if step.op == "permute":
            self._emit(step, f"permute({self._standard(value)}, {routing})", "grouped by expert")
        elif step.op == "unpermute":
            self._emit(step, f"unpermute({self._name(value)}, {routing})", "weighted sum of each token's results")
        else:
            split = _EXPERT_SPLITS[step.style if self.tp > 1 and step.style else "replicated"]
            sizes = f"{size(step.global_in[-1], self.model)}, {size(step.global_out[-1], self.model)}"
            constructor = f"ExpertLinear({sizes}" + (f', "{split}")' if split != "replicated" else ")")
            self.classes.add("ExpertLinear")
            attribute = self._name(step.name)
            self.submodules.append(Submodule(attribute, constructor, "the local experts' weights"))
            self.sharding.append((f"{attribute}.weight", "experts" + ("" if split == "replicated" else f", {split}")))
            self.experts.append(f"{attribute}.weight")
            self._emit(step, f"self.{attribute}({self._copied(value)}, {routing})")

    def _elementwise_operands(self, step: Step) -> tuple[list[str], str | None]:
        layouts = {self.layout.get(value) for value in step.inputs}
        if len(layouts) == 1:
            return [self._name(value) for value in step.inputs], layouts.pop()
        return [self._standard(value) for value in step.inputs], "standard"
