"""The model's ends: the token embedding on the first stage; the final norm, LM head and loss on the last.

Megatron's vocabulary parallelism on the tensor-parallel axis. The embedding's rows (the
vocabulary, padded to a multiple of tp) are split over the ranks: each looks up the ids in its
rows and zeroes the rest, a partial sum that an AllReduce (or, under sequence parallelism, a
ReduceScatter along seq) turns into the residual stream. The head is a column-parallel linear
over the vocabulary: each rank holds the logits of its rows, never the whole vocabulary. The
cross-entropy is computed on those parts: the maximum per token is AllReduced (MAX), then the
sum of exp(logit - max) and the target's logit (held by one rank) are AllReduced (SUM), and
each rank takes log(sum) - target logit. Learned positions are added after the reduction, each
rank adding the rows of its positions. Serving ends in a sampled token instead: the head reads
each sequence's last position only, and the sample's pairs are gathered (`_sampled`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from par.dsl.checks.deployment import Deployment, Op
from par.dsl.dag.types import CollectiveOp, ComputeOp, Kind, OpName
from par.dsl.frontend.source import Span
from par.dsl.lowering.backward import with_pairs
from par.dsl.lowering.placement import S_LAST, S_SEQ, P, Placement, R, stream_placement
from par.dsl.lowering.program import Ends, Shape, Step, drop_collectives
from par.dsl.lowering.shapes import stream_shape
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import COMPUTE_OPS

TOKENS = "tokens"  # the first stage's input: token ids [batch, seq]
STREAM = "x"  # the last stage's input: the residual stream after the last layer


def model_ends(deployment: Deployment) -> Ends | None:
    """The ends of a model with a vocabulary; None without one."""
    if deployment.model.vocab is None:
        return None
    return _Ends(deployment).build()


class _Ends:
    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self.model = deployment.model
        self.tp = deployment.mesh.tp
        self.stream = stream_placement(deployment.mesh.sequence_parallel) if self.tp > 1 else R
        self.vocab = self.model.padded_vocab(self.tp)
        self.steps: list[Step] = []

    def build(self) -> Ends:
        model, spans = self.model, self.deployment.span_of
        batch, seq, hidden = stream_shape(self.deployment)
        tokens, hidden_shape = (batch, seq), (batch, seq, hidden)
        rows = self.vocab // self.tp
        vocab_at = spans("vocab")

        self.steps = []
        embed = self._compute("embed", "embedding", (TOKENS,), (R,), P, (tokens,), hidden_shape, vocab_at)
        embed = self._with_params(embed, rows * hidden)
        stream = self._collective(
            embed,
            self.stream,
            "the embedding's rows are split over tp by vocabulary: each rank's lookup is a partial sum",
        )
        if model.positions == "learned":
            at = spans("positions")
            table = model.max_positions or model.seq
            positions = self._with_params(
                self._compute("pos_embed", "positions", (TOKENS,), (R,), self.stream, (tokens,), hidden_shape, at),
                table * hidden,
            )
            stream = self._compute(
                "add_positions",
                "add",
                (stream, positions),
                (self.stream, self.stream),
                self.stream,
                (hidden_shape, hidden_shape),
                hidden_shape,
                at,
            )
        first = self._finish(TOKENS, stream)

        self.steps = []
        norm = self._compute(
            "final_norm",
            cast(ComputeOp, model.final_norm),
            (STREAM,),
            (self.stream,),
            self.stream,
            (hidden_shape,),
            hidden_shape,
            spans("final_norm") if "final_norm" in self.deployment.spans else vocab_at,
        )
        serving = self.deployment.serve is not None
        gathered = self._collective(
            norm,
            R,
            "each sequence's last position, which the head reads, is taken from the whole sequence"
            if serving
            else "the head is a column-parallel linear over the vocabulary: it reads the whole sequence",
        )
        head_in = hidden_shape
        if serving:  # the head computes the logits of the last position only, the ones sampled
            head_in = (batch, 1, hidden)
            gathered = self._compute(
                "last_position", "last_position", (gathered,), (R,), R, (hidden_shape,), head_in, vocab_at
            )
        logits_shape = (batch, head_in[1], self.vocab)
        head = self._compute(
            "head", "linear", (gathered,), (R,), S_LAST, (head_in,), logits_shape, vocab_at, style="column"
        )
        tied_here = model.tie_embeddings and self.deployment.mesh.pp == 1  # the head is the embedding's matrix
        head = self._with_params(head, 0 if tied_here else rows * hidden)
        if serving:
            return self._sampled(first, head, batch, logits_shape, vocab_at, tokens)
        largest = self._compute(
            "loss_max", "loss_max", (head,), (S_LAST,), P, (logits_shape,), (batch, seq, 1), vocab_at
        )
        largest = self._collective(
            largest, R, "each rank holds the largest logit of its rows: an AllReduce with MAX gives every token's"
        )
        sums = self._compute(
            "loss_sum",
            "loss_sum",
            (head, largest),
            (S_LAST, R),
            P,
            (logits_shape, (batch, seq, 1)),
            (batch, seq, 2),
            vocab_at,
        )
        sums = self._collective(
            sums,
            R,
            "each rank holds the sum of exp(logit - max) over its rows, and the target's logit where it holds its row",
        )
        loss = self._compute("loss", "loss", (sums,), (R,), R, ((batch, seq, 2),), (1,), vocab_at)
        last = self._finish(STREAM, loss)
        return Ends(first[0], TOKENS, first[1], last[0], STREAM, last[1], tokens, (1,))

    def _sampled(self, first, head: str, batch: int, logits_shape: Shape, span: Span, tokens: Shape) -> Ends:
        """Greedy sampling on the vocabulary-parallel logits of each sequence's last position:
        each rank takes the largest of its logits and its index, and an AllGather over tp of
        these pairs lets every rank pick the token. (Seeded sampling among the top k gathers each
        rank's k largest logits first: one more AllGather, not in the DAG.)"""
        pairs = (batch, 1, 2 * self.tp)
        picked = self._compute("sample", "sample", (head,), (S_LAST,), S_LAST, (logits_shape,), pairs, span)
        picked = self._collective(
            picked, R, "each rank holds the largest logit of its rows and its index: every rank needs every pair to pick the token"
        )
        last = self._finish(STREAM, picked)
        return Ends(first[0], TOKENS, first[1], last[0], STREAM, last[1], tokens, pairs)

    def _finish(self, param: str, result: str) -> tuple[tuple[Step, ...], str]:
        steps, _ = with_pairs(tuple(self.steps), param, result, R if param == TOKENS else self.stream)
        if self.tp == 1:
            return drop_collectives(steps, result)
        return steps, result

    def _step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def _with_params(self, name: str, params: int) -> str:
        index = next(i for i, step in enumerate(self.steps) if step.name == name)
        step = self.steps[index]
        self.steps[index] = replace(
            step, params=params, tied=params > 0 and step.op == "linear" and self.model.tie_embeddings
        )
        return name

    def _compute(
        self,
        name: str,
        op: OpName,
        inputs: tuple[str, ...],
        placements: tuple[Placement, ...],
        out: Placement,
        shapes: tuple[Shape, ...],
        shape: Shape,
        span: Span,
        style: str | None = None,
    ) -> str:
        spec = COMPUTE_OPS[op]
        declared = spec.shape(Op(name, op, inputs, span, out_features=shape[-1], style=style), list(shapes), self.model)
        assert declared == shape, (name, declared, shape)  # the registry's shape rule agrees
        local_in = [p.local_shape(s, self.tp) for p, s in zip(placements, shapes, strict=True)]
        local_out = out.local_shape(shape, self.tp)
        self.steps.append(
            Step(
                name=name,
                op=op,
                kind="compute",
                inputs=inputs,
                in_placement=placements[0],
                out_placement=out,
                in_shape=local_in[0],
                out_shape=local_out,
                global_in=shapes[0],
                global_out=shape,
                span=span,
                flops=spec.flops(local_in[0], local_out),
                params=spec.params(local_in[0], local_out),
                style=style,
                operand_shapes=tuple(local_in) if len(set(local_in)) > 1 else None,
                operand_placements=placements if len(set(placements)) > 1 else None,
                dtype=spec.dtype,
                input_bytes=spec.input_bytes,
            )
        )
        return name

    def _collective(self, value: str, target: Placement, why: str) -> str:
        """The collective that makes `value` `target` (none if it is already)."""
        source = self._step(value)
        if source.out_placement == target:
            return value
        kind: CollectiveOp = (
            "reducescatter"
            if (source.out_placement, target) == (P, S_SEQ)
            else "allgather"
            if source.out_placement.kind == "S"
            else "allreduce"
        )
        spec = COLLECTIVES[kind]
        wire = spec.wire_fraction(self.tp)
        name = f"{kind}_{value}"
        shape = source.global_out
        conversion = f"{source.out_placement} -> {target} is {spec.prose}"
        self.steps.append(
            Step(
                name=name,
                op=kind,
                kind=_kind(kind),
                inputs=(value,),
                in_placement=source.out_placement,
                out_placement=target,
                in_shape=source.out_shape,
                out_shape=target.local_shape(shape, self.tp),
                global_in=shape,
                global_out=shape,
                span=source.span,
                wire_fraction=(wire.numerator, wire.denominator),
                reason=f"{why}: {conversion}",
                inserted=True,
                dtype=source.dtype,  # what it carries: its source's output
            )
        )
        return name


def _kind(collective: str) -> Kind:
    return COLLECTIVES[collective].kind
