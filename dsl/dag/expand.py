"""Expansion: Program -> the full per-device DAG of one forward microbatch (types.Dag).

One node per (device, op) per layer, one per collective instance, a Send/Recv pair per
tensor-parallel rank at every stage boundary, and `input` / `output`. Nodes are added in a
topological order, which the validator uses to prove acyclicity in one pass.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Literal

from par.dsl.checks.deployment import DTYPE_BYTES, Deployment
from par.dsl.dag import ids
from par.dsl.dag.types import CollectiveOp, Dag, EdgeAttrs, GraphAttrs, IoOp, NodeAttrs, Shape
from par.dsl.lowering.backward import PAIRS, backward_kind, backward_wire_bytes
from par.dsl.lowering.placement import R, share
from par.dsl.lowering.program import Program, Step
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import elements


def expand(program: Program) -> Dag:
    return _Expander(program).run()


def node_count(program: Program) -> int:
    """How many nodes `expand` makes, from the mesh and the layer alone: each layer has one node
    per rank for each compute step and slice and one per collective, on every replica; stage 0
    slices the input on every rank unless the stream is replicated; each stage boundary has a
    send and a recv per rank. Checked against the node budget before anything is expanded."""
    mesh = program.deployment.mesh

    def nodes(steps: tuple[Step, ...]) -> int:
        collectives = sum(1 for step in steps if step.kind == "comm")
        return collectives + (len(steps) - collectives) * mesh.tp

    per_layer = nodes(program.steps)
    ends = program.ends
    input_slices = 0 if program.stream == R or ends is not None else mesh.dp * mesh.tp
    boundaries = 2 * (mesh.pp - 1) * mesh.dp * mesh.tp
    per_replica = program.deployment.model.layers * per_layer + (nodes(ends.first) + nodes(ends.last) if ends else 0)
    return 2 + input_slices + mesh.dp * per_replica + boundaries


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


class _Expander:
    def __init__(self, program: Program):
        self.program = program
        self.deployment: Deployment = program.deployment
        self.mesh = self.deployment.mesh
        self.dtype_bytes = self.deployment.model.dtype_bytes
        # The graph is filled through its dicts (`_node`, `_succ`, `_pred`, laid out as networkx's):
        # `add_node` per node would cost more than expansion itself. Ids are unique by
        # construction; `run` verifies the count.
        self.graph: Dag = Dag(**graph_attributes(program))
        self.node_map: dict[str, NodeAttrs] = self.graph._node
        self.succ: dict[str, dict[str, EdgeAttrs]] = self.graph._succ
        self.pred: dict[str, dict[str, EdgeAttrs]] = self.graph._pred
        self.added = 0
        self.templates = {step.name: self._template(step) for step in program.steps}
        ends = program.ends
        self.ends = ends
        self.end_templates = {step.name: self._template(step) for step in (ends.first + ends.last if ends else ())}
        self.comm = {step.name for step in program.steps if step.kind == "comm"}
        self.issue_after = issue_after(program.steps)
        self.alone: dict[int, list[int]] = {rank: [rank] for rank in range(self.mesh.world)}  # each rank's devices list

    def run(self) -> Dag:
        mesh, program = self.mesh, self.program
        stage_src = str(self.deployment.spans.get("stages") or self.deployment.span_of("pp"))
        ends = self.ends
        given = ends.tokens if ends else program.stream_shape
        self._io(ids.INPUT, given, given, list(mesh.stage_ranks(0)), 0)
        entry = {d: self._entry_points(d) for d in range(mesh.dp)}
        exits: list[str] = []
        for stage, (first, last) in enumerate(mesh.stages):
            for dp_rank in range(mesh.dp):
                group = mesh.tp_group(dp_rank=dp_rank, stage=stage)
                current = entry[dp_rank]
                for layer in range(first, last + 1):
                    current = self._layer(layer, stage, dp_rank, group, current)
                if stage + 1 < mesh.pp:
                    entry[dp_rank] = self._boundary(stage, dp_rank, current, stage_src)
                else:
                    if ends:
                        current = self._ends(
                            ends.last, ends.last_param, ends.last_result, stage, dp_rank, group, current
                        )
                    exits.extend(dict.fromkeys(current))
        last = mesh.pp - 1
        if ends:
            self._io(ids.OUTPUT, ends.loss, ends.loss, list(mesh.stage_ranks(last)), last)
        else:
            self._io(ids.OUTPUT, program.stream_local, program.stream_shape, list(mesh.stage_ranks(last)), last)
        output = ids.OUTPUT
        for source in exits:
            self._edge(source, output, (0,))
        if len(self.node_map) != self.added:
            raise AssertionError("expansion produced a node id twice")
        return self.graph

    def _node(self, node: str, data: NodeAttrs) -> None:
        self.node_map[node] = data
        self.succ[node] = {}
        self.pred[node] = {}
        self.added += 1

    def _edge(self, source: str, target: str, operands: tuple[int, ...]) -> None:
        data: EdgeAttrs = {"operands": operands}
        self.succ[source][target] = data
        self.pred[target][source] = data

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
        self._backward(data, backward_kind(step), full)
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

    def _entry_points(self, dp_rank: int) -> list[str]:
        """Where layer 0 reads the layer input on each rank: `input`, or a slice of it."""
        group = self.mesh.tp_group(dp_rank=dp_rank, stage=0)
        program = self.program
        ends = self.ends
        if ends:  # the embedding reads the token ids, whole on every rank
            return self._ends(
                ends.first, ends.first_param, ends.first_result, 0, dp_rank, group, [ids.INPUT] * len(group)
            )
        if program.stream == R:  # with tp 1 lowering makes the stream R
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
                "in_shape": program.stream_shape,
                "out_shape": program.stream_local,
                "in_placement": "R",
                "out_placement": program.stream.text,
                "dtype": self.deployment.model.dtype,
                "flops": 0,
                "params": 0,
                "bytes": 0,
                "wire_bytes": 0,
                "arity": 1,
                "src": str(self.deployment.span_of("sp")),
                "reason": f"the residual stream is {program.stream}: each rank keeps its own part of the input",
            }
            self._node(node, data)
            self._edge(ids.INPUT, node, (0,))
            points.append(node)
        return points

    def _ends(
        self,
        steps: tuple[Step, ...],
        param: str,
        result: str,
        stage: int,
        dp_rank: int,
        group: tuple[int, ...],
        entry: list[str],
    ) -> list[str]:
        """Adds one end of the model (embedding, or final norm, head and loss) on one tensor-parallel
        group; returns the per-rank nodes of its output."""
        produced: dict[str, list[str]] = {param: entry}
        for step in steps:
            template = self.end_templates[step.name]
            if step.kind == "comm":
                node = ids.end_collective_id(step.name, dp_rank, self.mesh.dp)
                self._node(node, {**template, "stage": stage, "devices": list(group)})
                for source in dict.fromkeys(produced[step.inputs[0]]):
                    self._edge(source, node, (0,))
                produced[step.name] = [node] * len(group)
                continue
            names = [ids.end_id(step.name, rank) for rank in group]
            for rank, node in zip(group, names, strict=True):
                self._node(node, {**template, "stage": stage, "devices": [rank]})
            for sources, operands in self._operands(step, produced):
                for source, node in zip(sources, names, strict=True):
                    self._edge(source, node, operands)
            produced[step.name] = names
        return produced[result]

    def _layer(self, layer: int, stage: int, dp_rank: int, group: tuple[int, ...], entry: list[str]) -> list[str]:
        """Adds one layer on one tensor-parallel group; returns the per-rank nodes of its output.

        This loop makes most of the nodes of a large DAG, so it writes the graph's dicts inline
        (what `_node` and `_edge` do) and spells out `ids.compute_id`. The ranks' nodes of a
        step share one edge-attribute dict per operand and one devices list per rank (nothing
        writes them after expansion): a third less memory per node."""
        program, templates = self.program, self.templates
        node_map, succ, pred = self.node_map, self.succ, self.pred
        devices = list(group)
        produced: dict[str, list[str]] = {program.param: entry}
        if program.param_copied:  # the layer input enters column-parallel linears: its producers carry the AllReduce
            full = elements(program.stream_shape) * self.dtype_bytes
            for node in dict.fromkeys(entry):
                self._backward(node_map[node], PAIRS["copy_to_tp"].backward, full)
        prefix = f"layer_{layer}_"
        for step in program.steps:
            template = templates[step.name]
            if step.name in self.comm:
                node = ids.collective_id(layer, step.name, dp_rank, self.mesh.dp)
                collective = template.copy()
                collective["layer"], collective["stage"], collective["devices"] = layer, stage, devices
                before = self.issue_after.get(step.name)
                if before is not None:
                    collective["after"] = ids.collective_id(layer, before, dp_rank, self.mesh.dp)
                self._node(node, collective)
                for source in dict.fromkeys(produced[step.inputs[0]]):
                    self._edge(source, node, (0,))
                produced[step.name] = [node] * len(group)
                continue
            names = [f"{prefix}{step.name}_gpu{rank}" for rank in group]
            for rank, node in zip(group, names, strict=True):
                data = template.copy()  # what `dict(template, layer=...)` makes, faster
                data["layer"], data["stage"], data["devices"] = layer, stage, self.alone[rank]
                node_map[node] = data
                succ[node] = {}
                pred[node] = {}
            self.added += len(names)
            for source_lists, operands in self._operands(step, produced):
                edge: EdgeAttrs = {"operands": operands}
                for source, node in zip(source_lists, names, strict=True):
                    succ[source][node] = edge
                    pred[node][source] = edge
            produced[step.name] = names
        return produced[program.result]

    def _operands(self, step: Step, produced: dict[str, list[str]]) -> list[tuple[list[str], tuple[int, ...]]]:
        """(per-rank producers, operand indices) for each distinct input of a step: a value used
        twice feeds both operands through one edge."""
        indices: dict[str, tuple[int, ...]] = {}
        for operand, value in enumerate(step.inputs):
            indices[value] = indices.get(value, ()) + (operand,)
        return [(produced[value], operands) for value, operands in indices.items()]

    def _boundary(self, stage: int, dp_rank: int, outputs: list[str], src: str) -> list[str]:
        """Send/Recv from each rank of `stage` to the same tensor-parallel rank of the next."""
        mesh, program = self.mesh, self.program
        local_bytes = elements(program.stream_local) * self.dtype_bytes
        wire = {op: COLLECTIVES[op].wire_bytes(2, local_bytes) for op in ("send", "recv")}  # a rank and its peer
        first_next = mesh.stages[stage + 1][0]
        reason = f"pipeline boundary: layer {first_next - 1} on stage {stage} feeds layer {first_next} on stage {stage + 1}"
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
            sender = mesh.rank(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank)
            receiver = mesh.rank(dp_rank=dp_rank, stage=stage + 1, tp_rank=tp_rank)
            send, recv = ids.send_id(stage, sender), ids.recv_id(stage + 1, receiver)
            self._node(send, transfer("send", stage, sender, receiver))
            self._node(recv, transfer("recv", stage + 1, receiver, sender))
            self._edge(source, send, (0,))
            self._edge(send, recv, (0,))
            receivers.append(recv)
        return receivers
