"""Expansion: Program -> the full per-device DAG of one forward microbatch (compact.CompactDag).

One node per (device, op) per layer, one per collective instance, a Send/Recv pair per
tensor-parallel rank at every stage boundary, and `input` / `output`. Nodes are added in a
topological order, which the validator uses to prove acyclicity in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal, cast

from par.dsl.checks.deployment import DTYPE_BYTES, Deployment, Model
from par.dsl.dag import ids, ring
from par.dsl.dag.compact import CompactDag, NodeRef, Nodes
from par.dsl.dag.types import (
    BlockLayers,
    CollectiveOp,
    EdgeAttrs,
    ExpertAttrs,
    GraphAttrs,
    IoOp,
    ModelAttrs,
    NodeAttrs,
    Shape,
)
from par.dsl.lowering.backward import PAIRS, backward_kind, backward_wire_bytes
from par.dsl.lowering.placement import R, share
from par.dsl.lowering.program import Program, Step
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import COMPUTE_OPS, INT64, NOTHING, elements

# (first layer, last layer, the program of those layers): a model with a block per range of layers.
LayerPrograms = Sequence[tuple[int, int, Program]]
Produced = dict[str, Nodes]  # a step's name -> its nodes


def expand(program: Program, layer_programs: LayerPrograms = ()) -> CompactDag:
    """`layer_programs`: the program of each range of layers, when they differ; `program` is
    every layer's otherwise. `to_dag()` on the result gives the networkx-shaped DAG."""
    return _Expander(program, layer_programs).run()


def node_count(program: Program, layer_programs: LayerPrograms = ()) -> int:
    """How many nodes `expand` makes, from the mesh and the layer alone: each layer has one node
    per rank for each compute step and slice and one per collective, on every replica, and one
    per token routing of each expert-parallel group and tensor-parallel rank; stage 0 slices the
    input on every rank unless the stream is replicated; each stage boundary has a send and a
    recv per rank (interleaved: each boundary between model chunks), as has the return of a decode
    step's tokens from the last stage to the first. Checked against the node budget before anything
    is expanded."""
    mesh = program.deployment.mesh
    ranges = layer_programs or ((0, program.deployment.model.layers - 1, program),)
    layers = 0
    for first, last, each in ranges:
        groups = [_group(step) for step in each.steps]
        collectives = groups.count("tp")
        routings = groups.count("ep")
        per_layer = mesh.dp * (collectives + (len(groups) - collectives - routings) * mesh.tp) + routings * mesh.tp * (mesh.dp // mesh.ep)
        layers += (last - first + 1) * per_layer
    ends = program.ends
    end_nodes = 0
    if ends is not None:
        end_steps = ends.first + ends.last
        end_collectives = sum(1 for step in end_steps if step.kind == "comm")
        end_nodes = mesh.dp * (end_collectives + (len(end_steps) - end_collectives) * mesh.tp)
    input_slices = 0 if program.stream == R or ends is not None else mesh.dp * mesh.tp
    boundaries = 2 * (len(mesh.stages) - 1) * mesh.dp * mesh.tp
    if ends is not None and ends.fed_back and mesh.pp > 1:  # a decode step's tokens, last stage to first
        boundaries += 2 * mesh.dp * mesh.tp
    if mesh.cp > 1:  # each part of the sequence is a replica of the layer; attention adds its ring
        rings = sum((last - first + 1) * sum(step.op == "attention" for step in each.steps) for first, last, each in ranges)
        extra = mesh.dp * rings * ring.node_count(mesh.cp, mesh.cp_attention, mesh.tp)
        input_slices = 0 if ends is not None else mesh.dp * mesh.tp
        return 2 + mesh.cp * (input_slices + layers + end_nodes + boundaries) + extra
    return 2 + input_slices + layers + end_nodes + boundaries


def _group(step: Step) -> str | None:
    """tp: one node per tensor-parallel group; ep: one per expert-parallel group and tp rank; None: one per rank."""
    return COLLECTIVES[step.op].group if step.kind == "comm" else None


def issue_after(steps: tuple[Step, ...]) -> dict[str, str]:
    """Collective -> the one before it in program order, where its data does not depend on that one.

    Every rank issues a layer's collectives in program order; where two are independent (the
    AllGathers of `gate` and `up`), the DAG records that order on the later one (`after`), so
    that each rank's collectives still form one chain (invariant 6)."""
    upstream: dict[str, set[str]] = {}  # step -> the collectives its inputs depend on
    recorded: dict[str, str] = {}
    previous = None
    for step in steps:
        reached = set().union(*(upstream.get(value, set()) for value in step.inputs))
        if step.kind == "comm":
            if previous is not None and previous not in reached:
                recorded[step.name] = previous
            reached = reached | {step.name, *(upstream.get(previous, set()) if previous else set())}
            previous = step.name
        upstream[step.name] = reached
    return recorded


def recomputed_steps(steps: Sequence[Step], recompute: str) -> set[str]:
    """The steps of a layer whose forward the backward runs again under the mesh's `recompute`:
    selective, the attention core; full, the layer up to its last step that keeps a tensor for
    the backward. torch.utils.checkpoint (non-reentrant) stops its rerun there: what comes
    after (the last projection's collective, the residual add) feeds nothing the backward reads."""
    if recompute == "selective":
        return {step.name for step in steps if step.kind == "compute" and COMPUTE_OPS[step.op].selective}
    if recompute != "full":
        return set()
    saving = [index for index, step in enumerate(steps) if _keeps(step)]
    return {step.name for step in steps[: saving[-1] + 1]} if saving else set()


def _keeps(step: Step) -> bool:
    """Whether the code keeps a tensor for the step's backward (the registry's `saves`)."""
    spec = COMPUTE_OPS.get(step.op) if step.kind == "compute" else COLLECTIVES.get(step.op)
    return spec is not None and spec.saves != NOTHING


def graph_attributes(program: Program) -> GraphAttrs:
    deployment = program.deployment
    model, mesh = deployment.model, deployment.mesh
    return {
        "spec": deployment.name,
        "source": deployment.file.replace(os.sep, "/"),  # the same banners on every platform
        "model": {
            "name": model.name,
            "block": model.block,
            "layers": model.layers,
            "hidden": model.hidden,
            "heads": model.heads,
            "kv_heads": model.kv_heads,
            "head_dim": model.head_dim,
            "ffn": model.ffn,
            "vocab": model.vocab,
            "padded_vocab": model.padded_vocab(mesh.tp) if model.vocab is not None else None,
            "tie_embeddings": model.tie_embeddings,
            "positions": model.positions,
            "max_positions": model.max_positions,
            "final_norm": model.final_norm,
            "batch": model.batch,
            "seq": model.seq,
            "dtype": model.dtype,
        },
        "mesh": mesh.attributes(),
        "layers": model.layers,
        "stream": program.stream.text,
        "microbatch_shape": list(program.stream_shape),
        "strict": deployment.strict,
    }


def _with_experts(attributes: ModelAttrs, model: Model) -> None:
    """A model with experts carries their settings (`graph["model"]["moe"]`); others nothing."""
    if model.moe is not None:
        moe = model.moe
        attributes["moe"] = ExpertAttrs(
            experts=moe.experts,
            top_k=moe.top_k,
            expert_ffn=moe.expert_ffn,
            shared_experts=moe.shared_experts,
            router=moe.router,
            router_norm=moe.router_norm,
            capacity_factor=moe.capacity_factor,
        )


class _Expander:
    def __init__(self, program: Program, layer_programs: LayerPrograms = ()):
        self.program = program
        ranges = layer_programs or ((0, program.deployment.model.layers - 1, program),)
        self.layer_program = {layer: each for first, last, each in ranges for layer in range(first, last + 1)}
        self.deployment: Deployment = program.deployment
        self.mesh = self.deployment.mesh
        self.dtype_bytes = self.deployment.model.dtype_bytes
        # The graph is written in columns, the nodes of a step sharing its attribute dict
        # (par.dsl.dag.compact): the validator reads that; `to_dag` builds the networkx-shaped
        # DAG for the readers that want one. Ids are unique by construction; `CompactDag`
        # verifies it.
        attributes = graph_attributes(program)
        _with_experts(attributes["model"], self.deployment.model)
        if self.deployment.layer_blocks:
            attributes["model"]["block_layers"] = [
                BlockLayers(first=first, last=last, block=block.name) for first, last, block in self.deployment.layer_blocks
            ]
        self.graph = CompactDag(cast(dict[str, Any], attributes))
        programs = {id(each): each for each in self.layer_program.values()}
        self.templates_of = {}
        for key, each in programs.items():
            rerun = recomputed_steps(each.steps, self.mesh.recompute)
            self.templates_of[key] = {
                step.name: self.graph.template(self._template(step) | ({"recompute": True} if step.name in rerun else {})) for step in each.steps
            }
        self.issue_after_of = {key: issue_after(each.steps) for key, each in programs.items()}
        ends = program.ends
        self.ends = ends
        self.fed_back = ends is not None and ends.fed_back and self.mesh.pp > 1
        self.end_templates = {step.name: self._template(step) for step in (ends.first + ends.last if ends else ())}
        self.alone: dict[int, list[int]] = {rank: [rank] for rank in range(self.mesh.world)}  # each rank's devices list
        self.operand_indices: dict[int, dict[str, tuple[int, ...]]] = {}  # id(step) -> `_operands`' indices

    def run(self) -> CompactDag:
        if self.mesh.cp > 1:
            return self._run_context()
        mesh, program = self.mesh, self.program
        stage_src = str(self.deployment.spans.get("stages") or self.deployment.span_of("pp"))
        ends = self.ends
        given = ends.tokens if ends else program.stream_shape
        holder = mesh.pp - 1 if self.fed_back else 0  # the stage that holds the input
        self._io(ids.INPUT, given, given, list(mesh.stage_ranks(holder)), holder)
        entry = {d: self._entry_points(d) for d in range(mesh.dp)}
        exits: list[NodeRef] = []
        for chunk, (first, last) in enumerate(mesh.stages):
            stage = mesh.chunk_stage(chunk)
            # The replicas of one expert-parallel group run their layers together: token routing
            # joins them. With ep 1, replica by replica.
            for start in range(0, mesh.dp, mesh.ep):
                replicas = range(start, start + mesh.ep)
                current = {dp_rank: entry[dp_rank] for dp_rank in replicas}
                for layer in range(first, last + 1):
                    program = self.layer_program[layer]
                    if mesh.ep > 1 and any(_group(step) == "ep" for step in program.steps):
                        current = self._routed_layer(layer, stage, program, current)
                        continue
                    for dp_rank in replicas:
                        group = mesh.tp_group(dp_rank=dp_rank, stage=stage)
                        current[dp_rank] = self._layer(layer, stage, dp_rank, group, current[dp_rank], program)
                for dp_rank in replicas:
                    if chunk + 1 < len(mesh.stages):
                        entry[dp_rank] = self._boundary(chunk, dp_rank, current[dp_rank], stage_src)
                    else:
                        outputs = current[dp_rank]
                        if ends:
                            group = mesh.tp_group(dp_rank=dp_rank, stage=stage)
                            outputs = self._ends(ends.last, ends.last_param, ends.last_result, stage, dp_rank, group, outputs)
                        exits.extend(dict.fromkeys(outputs))
        program = self.program
        last = mesh.pp - 1
        if ends:
            self._io(ids.OUTPUT, ends.loss, ends.loss, list(mesh.stage_ranks(last)), last)
        else:
            self._io(ids.OUTPUT, program.stream_local, program.stream_shape, list(mesh.stage_ranks(last)), last)
        output = ids.OUTPUT
        for source in exits:
            self._edge(source, output, (0,))
        return self.graph

    def _node(self, node: str, data: NodeAttrs) -> int:
        return self.graph.add(node, data)

    def _edge(self, source: NodeRef, target: NodeRef, operands: tuple[int, ...]) -> None:
        self.graph.add_edge(source, target, {"operands": operands})

    def _collective(self, node: str, data: NodeAttrs, producers: Nodes, members: int) -> list[int]:
        """A node over a group (a collective), fed once by each distinct producer; returns it once
        per member, as a step's per-rank nodes."""
        number = self._node(node, data)
        for source in dict.fromkeys(producers):
            self._edge(source, number, (0,))
        return [number] * members

    def _template(self, step: Step) -> NodeAttrs:
        """The attributes of every node of a step; each copy gets its layer, stage and devices."""
        dtype = step.dtype or self.deployment.model.dtype
        size = DTYPE_BYTES[dtype]
        bytes_in = elements(step.in_shape) * (step.input_bytes or size)
        full = elements(step.global_out) * size
        data: NodeAttrs = {
            "op": step.op,
            "kind": step.kind,
            "name": step.name,
            "layer": None,
            "stage": 0,
            "devices": [],
            "in_shape": step.in_shape,
            "out_shape": step.out_shape,
            "in_placement": step.in_placement.text,
            "out_placement": step.out_placement.text,
            "dtype": dtype,
            "flops": step.flops,
            "params": step.params,
            "bytes": bytes_in,
            "wire_bytes": share(full, Fraction(*step.wire_fraction)),
            "src": str(step.span),
        }
        if step.kind != "compute":
            assert step.reason is not None  # lowering says why each collective and slice is there
            data["reason"] = step.reason
        if step.kind == "comm":
            data["inserted"] = step.inserted
        else:
            data["arity"] = len(step.inputs)
        if step.style is not None:
            data["style"] = step.style
        if step.bias:
            data["bias"] = True
        kind = backward_kind(step)
        if kind is not None and COLLECTIVES[kind].group == "ep":
            # A routing's gradient goes back the way its tokens came: the same bytes.
            data["backward"], data["backward_wire_bytes"] = kind, data["wire_bytes"]
            data["wire_bytes_worst"] = self._worst(data["wire_bytes"], step)
        else:
            self._backward(data, kind, full)
        if step.backward_reason is not None:
            data["backward_reason"] = step.backward_reason
        if step.operand_shapes is not None:
            data["operand_shapes"] = list(step.operand_shapes)
        if step.operand_placements is not None:
            data["operand_placements"] = [placement.text for placement in step.operand_placements]
        if step.tied:
            data["tied"] = True
        if step.clone:
            data["clone"] = True
        return data

    def _worst(self, balanced: int | float, step: Step) -> int | float:
        """A routing's bytes when experts get up to capacity_factor times their balanced share:
        each rank sends at most all the tokens it holds."""
        moe = self.deployment.model.moe
        assert moe is not None  # only a model with experts routes tokens
        held = balanced * self.mesh.ep / (self.mesh.ep - 1)
        return min(held, balanced * moe.capacity_factor)

    def _backward(self, data: NodeAttrs, kind: CollectiveOp | None, full_bytes: int) -> None:
        """The collective the backward issues on the gradient of the node's output (par.dsl.lowering.backward)."""
        if kind is not None:
            data["backward"] = kind
            data["backward_wire_bytes"] = backward_wire_bytes(kind, self.mesh.tp, full_bytes)

    def _io(self, name: IoOp, in_shape: Shape, out_shape: Shape, devices: list[int], stage: int) -> str:
        data: NodeAttrs = {
            "op": name,
            "kind": "route",
            "name": name,
            "layer": None,
            "stage": stage,
            "devices": devices,
            "in_shape": in_shape,
            "out_shape": out_shape,
            "dtype": self.deployment.model.dtype,
            "flops": 0,
            "params": 0,
            "bytes": 0,
            "wire_bytes": 0,
            "src": str(self.deployment.span_of("batch" if name == ids.INPUT else "layers")),
        }
        self._node(name, data)
        return name

    def _entry_points(self, dp_rank: int, cp_rank: int = 0) -> Nodes:
        """Where layer 0 reads the layer input on each rank: `input`, or a slice of it (under
        context parallelism always: each rank's part of the sequence)."""
        group = self.mesh.tp_group(dp_rank=dp_rank, stage=0, cp_rank=cp_rank)
        program = self.program
        ends = self.ends
        if ends:  # the embedding reads the token ids, whole on every rank
            tokens = self._fed_back_tokens(dp_rank, group) if self.fed_back else [ids.INPUT] * len(group)
            return self._ends(ends.first, ends.first_param, ends.first_result, 0, dp_rank, group, tokens, cp_rank)
        if program.stream == R and self.mesh.cp == 1:  # with tp 1 lowering makes the stream R
            return [ids.INPUT] * len(group)
        points = []
        for rank in group:
            node = ids.input_slice_id(rank)
            data: NodeAttrs = {
                "op": "slice",
                "kind": "route",
                "name": "input_slice",
                "layer": None,
                "stage": 0,
                "devices": [rank],
                "in_shape": self._given_input(),
                "out_shape": program.stream_local,
                "in_placement": "R",
                "out_placement": program.stream.text,
                "dtype": self.deployment.model.dtype,
                "flops": 0,
                "params": 0,
                "bytes": 0,
                "wire_bytes": 0,
                "arity": 1,
                "src": str(self.deployment.span_of("sp" if self.mesh.cp == 1 else "cp")),
                "reason": self._slice_reason(cp_rank),
            }
            self._node(node, data)
            self._edge(ids.INPUT, node, (0,))
            points.append(node)
        return points

    def _fed_back_tokens(self, dp_rank: int, group: tuple[int, ...]) -> Nodes:
        """A decode step's tokens, sampled by the step before on the last stage, whose every rank
        holds them after the sampling's AllGather: each sends them to the same tensor-parallel
        rank of the first stage. Returns the recv nodes, one per rank of `group` (stage 0)."""
        mesh, ends = self.mesh, self.ends
        assert ends is not None
        last = mesh.pp - 1
        local_bytes = elements(ends.tokens) * INT64
        wire = {op: COLLECTIVES[op].wire_bytes(2, local_bytes) for op in ("send", "recv")}
        reason = "a decode step embeds the tokens the step before sampled on the last stage"

        def transfer(op: Literal["send", "recv"], stage: int, rank: int, peer: int) -> NodeAttrs:
            return {
                "op": op,
                "kind": "comm",
                "name": f"token_{op}",
                "layer": None,
                "stage": stage,
                "devices": [rank],
                "in_shape": ends.tokens,
                "out_shape": ends.tokens,
                "in_placement": "R",
                "out_placement": "R",
                "dtype": self.deployment.model.dtype,
                "flops": 0,
                "params": 0,
                "bytes": local_bytes,
                "wire_bytes": wire[op],
                "src": str(self.deployment.span_of("generate")),
                "reason": reason,
                "inserted": True,
                "peer": peer,
            }

        receivers = []
        for tp_rank, receiver in enumerate(group):
            sender = mesh.rank(dp_rank=dp_rank, stage=last, tp_rank=tp_rank)
            send, recv = ids.token_send_id(sender), ids.token_recv_id(receiver)
            sent = self._node(send, transfer("send", last, sender, receiver))
            received = self._node(recv, transfer("recv", 0, receiver, sender))
            self._edge(ids.INPUT, sent, (0,))
            self._edge(sent, received, (0,))
            receivers.append(received)
        return receivers

    def _ends(
        self,
        steps: tuple[Step, ...],
        param: str,
        result: str,
        stage: int,
        dp_rank: int,
        group: tuple[int, ...],
        entry: Nodes,
        cp_rank: int = 0,
    ) -> Nodes:
        """Adds one end of the model (embedding, or final norm, head and loss) on one tensor-parallel
        group; returns the per-rank nodes of its output."""
        produced: Produced = {param: entry}
        for step in steps:
            template = self.end_templates[step.name]
            if step.kind == "comm":
                node = ids.end_collective_id(step.name, dp_rank, self.mesh.dp, cp_rank, self.mesh.cp)
                produced[step.name] = self._collective(node, {**template, "stage": stage, "devices": list(group)}, produced[step.inputs[0]], len(group))
                continue
            names = [ids.end_id(step.name, rank) for rank in group]
            for rank, node in zip(group, names, strict=True):
                self._node(node, {**template, "stage": stage, "devices": [rank]})
            for sources, operands in self._operands(step, produced):
                for source, node in zip(sources, names, strict=True):
                    self._edge(source, node, operands)
            produced[step.name] = names
        return produced[result]

    def _layer(self, layer: int, stage: int, dp_rank: int, group: tuple[int, ...], entry: Nodes, program: Program | None = None) -> Nodes:
        """Adds one layer on one tensor-parallel group; returns the per-rank nodes of its output."""
        program = program or self.program
        templates, issued_after = self.templates_of[id(program)], self.issue_after_of[id(program)]
        devices = list(group)
        produced: Produced = {program.param: entry}
        if program.param_copied:  # the layer input enters column-parallel linears: its producers carry the AllReduce
            full = elements(program.stream_shape) * self.dtype_bytes
            for node in dict.fromkeys(entry):
                self._backward(self.graph.own(node), PAIRS["copy_to_tp"].backward, full)
        for step in program.steps:
            template = templates[step.name]
            if step.kind == "comm":
                node = ids.collective_id(layer, step.name, dp_rank, self.mesh.dp)
                collective = template.copy()
                collective["layer"], collective["stage"], collective["devices"] = layer, stage, devices
                before = issued_after.get(step.name)
                if before is not None:
                    collective["after"] = ids.collective_id(layer, before, dp_rank, self.mesh.dp)
                produced[step.name] = self._collective(node, collective, produced[step.inputs[0]], len(group))
                continue
            produced[step.name] = self._stamp(step, template, layer, stage, group, produced)
        return produced[program.result]

    def _stamp(self, step: Step, template: NodeAttrs, layer: int, stage: int, group: Sequence[int], produced: Produced) -> range:
        """A compute step on each rank of a tensor-parallel group: its nodes, fed by the
        producers of its inputs. Returns their numbers.

        This makes most of the nodes of a large DAG: they share the step's template, their ids
        follow from it (par.dsl.dag.compact), and the edges of an operand share one dict."""
        graph, alone = self.graph, self.alone
        targets = graph.stamp(template, layer, stage, [alone[rank] for rank in group])
        succ, pred, number = graph.succ, graph.pred, graph.number
        for producers, operands in self._operands(step, produced):
            edge: EdgeAttrs = {"operands": operands}
            sources = producers if type(producers) is range else [number(source) for source in producers]
            for source, target in zip(sources, targets, strict=True):
                succ[source].append((target, edge))
                pred[target].append((source, edge))
        return targets

    def _routed_layer(self, layer: int, stage: int, program: Program, entries: dict[int, Nodes]) -> dict[int, Nodes]:
        """Adds one layer on the replicas of an expert-parallel group, step by step: a token
        routing is one node per tensor-parallel rank, over that rank's expert-parallel group.
        Returns each replica's per-rank nodes of the layer's output."""
        mesh, templates = self.mesh, self.templates_of[id(program)]
        issued_after, group_of = self.issue_after_of[id(program)], {step.name: _group(step) for step in program.steps}
        produced = {dp_rank: {program.param: entry} for dp_rank, entry in entries.items()}
        if program.param_copied:
            full = elements(program.stream_shape) * self.dtype_bytes
            for entry in entries.values():
                for node in dict.fromkeys(entry):
                    self._backward(self.graph.own(node), PAIRS["copy_to_tp"].backward, full)
        replicas = list(entries)
        groups = {dp_rank: mesh.tp_group(dp_rank=dp_rank, stage=stage) for dp_rank in replicas}
        for step in program.steps:
            template = templates[step.name]
            if _group(step) == "ep":
                for tp_rank in range(mesh.tp):
                    node = ids.routing_id(layer, step.name, replicas[0] // mesh.ep, mesh.dp // mesh.ep, tp_rank, mesh.tp)
                    data = template.copy()
                    members = [mesh.rank(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank) for dp_rank in replicas]
                    data["layer"], data["stage"], data["devices"] = layer, stage, members
                    before = issued_after.get(step.name)
                    if before is not None and group_of[before] == "ep":  # the same members: an earlier routing
                        data["after"] = ids.routing_id(layer, before, replicas[0] // mesh.ep, mesh.dp // mesh.ep, tp_rank, mesh.tp)
                    self._node(node, data)
                    for dp_rank in replicas:
                        self._edge(produced[dp_rank][step.inputs[0]][tp_rank], node, (0,))
                for dp_rank in replicas:
                    nodes = [ids.routing_id(layer, step.name, replicas[0] // mesh.ep, mesh.dp // mesh.ep, t, mesh.tp) for t in range(mesh.tp)]
                    produced[dp_rank][step.name] = nodes
                continue
            for dp_rank in replicas:
                group = groups[dp_rank]
                if step.kind == "comm":
                    node = ids.collective_id(layer, step.name, dp_rank, mesh.dp)
                    data = template.copy()
                    data["layer"], data["stage"], data["devices"] = layer, stage, list(group)
                    before = issued_after.get(step.name)
                    if before is not None and group_of[before] == "tp":  # the same members: an earlier collective of the group
                        data["after"] = ids.collective_id(layer, before, dp_rank, mesh.dp)
                    produced[dp_rank][step.name] = self._collective(node, data, produced[dp_rank][step.inputs[0]], len(group))
                    continue
                produced[dp_rank][step.name] = self._stamp(step, template, layer, stage, group, produced[dp_rank])
        return {dp_rank: produced[dp_rank][program.result] for dp_rank in replicas}

    def _operands(self, step: Step, produced: Produced) -> list[tuple[Nodes, tuple[int, ...]]]:
        """(per-rank producers, operand indices) for each distinct input of a step: a value used
        twice feeds both operands through one edge."""
        indices = self.operand_indices.get(id(step))
        if indices is None:  # once per step of the program, not per layer and replica
            indices = self.operand_indices[id(step)] = {}
            for operand, value in enumerate(step.inputs):
                indices[value] = indices.get(value, ()) + (operand,)
        return [(produced[value], operands) for value, operands in indices.items()]

    def _boundary(self, chunk: int, dp_rank: int, outputs: Nodes, src: str, cp_rank: int = 0) -> Nodes:
        """Send/Recv from each rank of the stage of model chunk `chunk` (an entry of `mesh.stages`;
        without interleaving, a stage) to the same tensor-parallel rank of the next chunk's stage:
        interleaved, the last stage's chunk sends to the first stage's next one."""
        mesh, program = self.mesh, self.program
        local_bytes = elements(program.stream_local) * self.dtype_bytes
        wire = {op: COLLECTIVES[op].wire_bytes(2, local_bytes) for op in ("send", "recv")}  # a rank and its peer
        first_next = mesh.stages[chunk + 1][0]
        here, there = mesh.chunk_stage(chunk), mesh.chunk_stage(chunk + 1)
        reason = f"pipeline boundary: layer {first_next - 1} on stage {here} feeds layer {first_next} on stage {there}"
        if mesh.chunks > 1:
            reason += f" (model chunk {chunk} to {chunk + 1})"
        placement = program.stream.text

        def transfer(op: Literal["send", "recv"], stage: int, rank: int, peer: int) -> NodeAttrs:
            return {
                "op": op,
                "kind": "comm",
                "name": op,
                "layer": None,
                "stage": stage,
                "devices": [rank],
                "in_shape": program.stream_local,
                "out_shape": program.stream_local,
                "in_placement": placement,
                "out_placement": placement,
                "dtype": self.deployment.model.dtype,
                "flops": 0,
                "params": 0,
                "bytes": local_bytes,
                "wire_bytes": wire[op],
                "src": src,
                "reason": reason,
                "inserted": True,
                "peer": peer,
            }

        receivers = []
        for tp_rank, source in enumerate(outputs):
            sender = mesh.rank(dp_rank=dp_rank, stage=here, tp_rank=tp_rank, cp_rank=cp_rank)
            receiver = mesh.rank(dp_rank=dp_rank, stage=there, tp_rank=tp_rank, cp_rank=cp_rank)
            if mesh.chunks > 1:
                send, recv = ids.chunk_send_id(chunk, sender), ids.chunk_recv_id(chunk + 1, receiver)
                self._node(send, {**transfer("send", here, sender, receiver), "chunk": chunk})
                received: NodeAttrs = {**transfer("recv", there, receiver, sender), "chunk": chunk + 1}
                if chunk + 1 >= mesh.pp:
                    # The receiver sent its previous chunk's output before: that send reaches this
                    # recv only through the other stages, so the issue order is recorded.
                    received["after"] = ids.chunk_send_id(chunk + 1 - mesh.pp, receiver)
                self._node(recv, received)
            else:
                send, recv = ids.send_id(chunk, sender), ids.recv_id(chunk + 1, receiver)
                self._node(send, transfer("send", here, sender, receiver))
                self._node(recv, transfer("recv", there, receiver, sender))
                if self.fed_back and there == mesh.pp - 1:  # the last stage sent the tokens first
                    self.graph.own(recv)["after"] = ids.token_send_id(receiver)
            self._edge(source, send, (0,))
            self._edge(send, recv, (0,))
            receivers.append(recv)
        return receivers

    # -- context parallelism (docs/language.md, Context parallelism) ----------------------------------

    def _given_input(self) -> Shape:
        """The input every rank slices its part from: one microbatch, the whole sequence."""
        batch, seq, hidden = self.program.stream_shape
        return (batch, seq * self.mesh.cp, hidden)

    def _slice_reason(self, cp_rank: int) -> str:
        program, mesh = self.program, self.mesh
        if mesh.cp == 1:
            return f"the residual stream is {program.stream}: each rank keeps its own part of the input"
        chunks = f"chunks {cp_rank} and {2 * mesh.cp - 1 - cp_rank} of {2 * mesh.cp}"
        return f"context parallelism (cp {mesh.cp}): this rank holds {chunks} of the sequence" + (
            f", its residual stream {program.stream}" if program.stream != R else ""
        )

    def _run_context(self) -> CompactDag:
        """`run` for a context-parallel mesh: each part of the sequence runs the layer like a
        replica, and the attention steps of its parts join them (par.dsl.dag.ring)."""
        mesh, program, ends = self.mesh, self.program, self.ends
        builder = ring.RingBuilder(self.deployment, self._node, self._edge)
        stage_src = str(self.deployment.spans.get("stages") or self.deployment.span_of("pp"))
        batch, seq, _ = program.stream_shape
        given = (batch, seq * mesh.cp) if ends else self._given_input()
        self._io(ids.INPUT, given, given, list(mesh.stage_ranks(0)), 0)
        if ends:  # the embedding reads this rank's part of the token ids
            self.graph.own(ids.INPUT)["out_shape"] = ends.tokens
        entry = {(d, c): self._entry_points(d, c) for d in range(mesh.dp) for c in range(mesh.cp)}
        exits: list[NodeRef] = []
        for chunk, (first, last) in enumerate(mesh.stages):
            stage = mesh.chunk_stage(chunk)
            for dp_rank in range(mesh.dp):
                current = [entry[(dp_rank, c)] for c in range(mesh.cp)]
                for layer in range(first, last + 1):
                    current = self._context_layer(layer, stage, dp_rank, self.layer_program[layer], current, builder)
                for c in range(mesh.cp):
                    if chunk + 1 < len(mesh.stages):
                        entry[(dp_rank, c)] = self._boundary(chunk, dp_rank, current[c], stage_src, c)
                        continue
                    outputs = current[c]
                    if ends:
                        group = mesh.tp_group(dp_rank=dp_rank, stage=stage, cp_rank=c)
                        outputs = self._ends(ends.last, ends.last_param, ends.last_result, stage, dp_rank, group, outputs, c)
                    exits.extend(dict.fromkeys(outputs))
        last = mesh.pp - 1
        if ends:
            self._io(ids.OUTPUT, ends.loss, ends.loss, list(mesh.stage_ranks(last)), last)
        else:
            self._io(ids.OUTPUT, program.stream_local, self._given_input(), list(mesh.stage_ranks(last)), last)
        for source in exits:
            self._edge(source, ids.OUTPUT, (0,))
        return self.graph

    def _context_layer(
        self, layer: int, stage: int, dp_rank: int, program: Program, entries: list[Nodes], builder: ring.RingBuilder
    ) -> list[Nodes]:
        """One layer on every part of the sequence of one replica, step by step; returns each
        part's per-rank nodes of the layer's output."""
        mesh, templates, issued_after = self.mesh, self.templates_of[id(program)], self.issue_after_of[id(program)]
        produced = [{program.param: entry} for entry in entries]
        groups = [mesh.tp_group(dp_rank=dp_rank, stage=stage, cp_rank=c) for c in range(mesh.cp)]
        if program.param_copied:
            full = elements(program.stream_shape) * self.dtype_bytes
            for entry in entries:
                for node in dict.fromkeys(entry):
                    self._backward(self.graph.own(node), PAIRS["copy_to_tp"].backward, full)
        for step in program.steps:
            template = templates[step.name]
            if step.op == "attention":
                outputs = builder.attention(layer, stage, dp_rank, step, template, [each[step.inputs[0]] for each in produced])
                for c, nodes in enumerate(outputs):
                    produced[c][step.name] = nodes
                continue
            for c, group in enumerate(groups):
                if step.kind == "comm":
                    node = ids.collective_id(layer, step.name, dp_rank, mesh.dp, c, mesh.cp)
                    data = template.copy()
                    data["layer"], data["stage"], data["devices"] = layer, stage, list(group)
                    before = issued_after.get(step.name)
                    if before is not None:
                        data["after"] = ids.collective_id(layer, before, dp_rank, mesh.dp, c, mesh.cp)
                    produced[c][step.name] = self._collective(node, data, produced[c][step.inputs[0]], len(group))
                    continue
                produced[c][step.name] = self._stamp(step, template, layer, stage, group, produced[c])
        return [each[program.result] for each in produced]
