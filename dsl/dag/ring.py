"""Attention under context parallelism: the nodes one attention step becomes (docs/language.md,
Context parallelism).

Each rank of a context-parallel group holds its part of the sequence (chunks c and 2·cp − 1 − c
of 2·cp: the causal work is even, docs/cost.md). With `cp_attention ring` the keys and values
travel the ring: at step s a rank attends with its queries to the block it holds and passes that
block on to the next rank (cp rank c + 1) while it receives the next one from the previous (cp
rank c − 1); after cp − 1 passes every rank has seen every block, and `attn_merge` rescales the
partial outputs by their logsumexp and sums them. With `cp_attention allgather` one AllGather of
the group's keys and values replaces the ring and one attention reads them all.

Issue order (no deadlock with blocking sends): at every step an even cp rank sends, then
receives; an odd one receives, then sends (TransformerEngine's order without batched P2P). The
DAG records it with `after`; the validator proves it by running the ring (par.dsl.dag.validate).
"""

from __future__ import annotations

from collections.abc import Callable

from par.dsl.checks.deployment import Deployment
from par.dsl.dag import ids
from par.dsl.dag.compact import NodeRef, Nodes
from par.dsl.dag.types import NodeAttrs, Shape
from par.dsl.lowering.program import Step
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import MERGE_FLOPS, elements


def kv_shape(qkv: Shape, deployment: Deployment) -> Shape:
    """The keys and values of a fused QKV: 2·kv_heads of its (heads + 2·kv_heads) heads."""
    model = deployment.model
    features = qkv[-1] * 2 * model.kv_heads // (model.heads + 2 * model.kv_heads)
    return (*qkv[:-1], features)


def ring_id(layer: int, name: str, dp_rank: int, dp: int, tp_rank: int, tp: int) -> str:
    """Names one ring: the attention, the replica and the tensor-parallel rank it serves."""
    return f"layer_{layer}_{name}" + (f"_dp{dp_rank}" if dp > 1 else "") + (f"_tp{tp_rank}" if tp > 1 else "")


def node_count(cp: int, algorithm: str, tp: int) -> int:
    """Nodes one attention step makes on one context-parallel group of every tensor-parallel
    rank, beyond the one per rank it would make without cp (`expand.node_count`): per rank a
    slice of K and V, and either cp ring steps, a send and a recv per pass and the merge (the
    merge keeps the attention's id), or one AllGather per tensor-parallel rank."""
    if algorithm == "allgather":
        return tp * cp + tp  # the slices, the AllGathers
    return tp * cp * (1 + cp + 2 * (cp - 1))  # slice, steps, transfers; the merge is the one per rank


class RingBuilder:
    """Adds the nodes of one attention step across the context-parallel groups of one replica
    and stage, through the expander's `node` and `edge`."""

    def __init__(self, deployment: Deployment, node: Callable[[str, NodeAttrs], object], edge: Callable[[NodeRef, NodeRef, tuple[int, ...]], None]):
        self.deployment = deployment
        self.mesh = deployment.mesh
        self.node, self.edge = node, edge
        self.dtype_bytes = deployment.model.dtype_bytes
        self.src = str(deployment.span_of("cp"))

    def attention(self, layer: int, stage: int, dp_rank: int, step: Step, template: NodeAttrs, qkv: list[Nodes]) -> list[list[str]]:
        """`qkv[c][t]`: the node giving the attention's input on cp rank c, tp rank t. Returns
        the nodes of its output the same way."""
        mesh = self.mesh
        out: list[list[str]] = [[] for _ in range(mesh.cp)]
        for tp_rank in range(mesh.tp):
            ring = mesh.cp_group(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank)
            sources = [qkv[c][tp_rank] for c in range(mesh.cp)]
            blocks = [self._kv_slice(layer, stage, step, template, rank, source) for rank, source in zip(ring, sources, strict=True)]
            name = ring_id(layer, step.name, dp_rank, mesh.dp, tp_rank, mesh.tp)
            if mesh.cp_attention == "allgather":
                results = self._gathered(layer, stage, dp_rank, tp_rank, step, template, ring, sources, blocks)
            else:
                results = self._ring(layer, stage, step, template, ring, sources, blocks, name)
            for c, node in enumerate(results):
                out[c].append(node)
        return out

    # -- the parts ---------------------------------------------------------------------------------

    def _kv_slice(self, layer: int, stage: int, step: Step, template: NodeAttrs, rank: int, source: NodeRef) -> str:
        node = ids.compute_id(layer, f"{step.name}_kv", rank)
        placement = template.get("in_placement", "R")
        data: NodeAttrs = {
            "op": "slice",
            "kind": "route",
            "name": f"{step.name}_kv",
            "layer": layer,
            "stage": stage,
            "devices": [rank],
            "in_shape": step.in_shape,
            "out_shape": kv_shape(step.in_shape, self.deployment),
            "in_placement": placement,
            "out_placement": placement,
            "dtype": template["dtype"],
            "flops": 0,
            "params": 0,
            "bytes": 0,
            "wire_bytes": 0,
            "arity": 1,
            "src": self.src,
            "reason": f"context parallelism (cp {self.mesh.cp}): the keys and values of this rank's part of the sequence go to the others",
        }
        self.node(node, data)
        self.edge(source, node, (0,))
        return node

    def _step(self, layer: int, stage: int, step: Step, template: NodeAttrs, rank: int, index: int, kv: Shape, flops: int) -> str:
        node = ids.ring_step_id(layer, step.name, index, rank)
        placement = template.get("in_placement", "R")
        data: NodeAttrs = {
            "op": "ring_attention",
            "kind": "compute",
            "name": f"{step.name}_ring{index}",
            "layer": layer,
            "stage": stage,
            "devices": [rank],
            "in_shape": step.in_shape,
            "out_shape": step.out_shape,
            "in_placement": placement,
            "out_placement": template.get("out_placement", "R"),
            "operand_shapes": [step.in_shape, kv],
            "dtype": template["dtype"],
            "flops": flops,
            "params": 0,
            "bytes": template["bytes"],
            "wire_bytes": 0,
            "arity": 2,
            "src": template["src"],
        }
        self.node(node, data)
        return node

    def _transfer(self, op: str, layer: int, stage: int, name: str, index: int, rank: int, peer: int, kv: Shape, ring: str, origin: str) -> NodeAttrs:
        block = elements(kv) * self.dtype_bytes
        wire = COLLECTIVES[op].wire_bytes(2, block)
        data: NodeAttrs = {
            "op": "send" if op == "send" else "recv",
            "kind": "comm",
            "name": f"{op}_kv_step{index}",
            "layer": layer,
            "stage": stage,
            "devices": [rank],
            "in_shape": kv,
            "out_shape": kv,
            "dtype": self.deployment.model.dtype,
            "flops": 0,
            "params": 0,
            "bytes": block,
            "wire_bytes": wire,
            "src": self.src,
            "reason": f"ring attention (cp {self.mesh.cp}), step {index}: {origin}",
            "inserted": True,
            "peer": peer,
            # In the backward the blocks travel the ring again and their gradients (dK, dV) with them.
            "backward": "send" if op == "send" else "recv",
            "backward_wire_bytes": 2 * wire,
            "ring": ring,
            "ring_step": index,
        }
        return data

    def _ring(self, layer: int, stage: int, step: Step, template: NodeAttrs, ring: tuple[int, ...], sources: list[NodeRef], blocks: list[str], name: str) -> list[str]:
        cp = len(ring)
        kv = kv_shape(step.in_shape, self.deployment)
        steps: list[list[str]] = [[] for _ in range(cp)]
        for c, rank in enumerate(ring):  # step 0: each rank's own block
            node = self._step(layer, stage, step, template, rank, 0, kv, step.flops)
            self.edge(sources[c], node, (0,))
            self.edge(blocks[c], node, (1,))
            steps[c].append(node)
        held = list(blocks)  # the block each rank holds and passes on
        for index in range(1, cp):
            sends, recvs = [], []
            for c, rank in enumerate(ring):
                following, previous = ring[(c + 1) % cp], ring[(c - 1) % cp]
                origin = (c - index) % cp
                send = ids.ring_send_id(layer, step.name, index, rank)
                recv = ids.ring_recv_id(layer, step.name, index, rank)
                sent = f"cp rank {c} passes the block of cp rank {(c - index + 1) % cp} to cp rank {(c + 1) % cp}"
                got = f"cp rank {c} receives the block of cp rank {origin} from cp rank {(c - 1) % cp}"
                send_data = self._transfer("send", layer, stage, step.name, index, rank, following, kv, name, sent)
                recv_data = self._transfer("recv", layer, stage, step.name, index, rank, previous, kv, name, got)
                if c % 2 == 0:  # even: send, then receive
                    recv_data["after"] = send
                else:  # odd: receive, then send
                    send_data["after"] = recv
                    if index > 1:
                        recv_data["after"] = ids.ring_send_id(layer, step.name, index - 1, rank)
                sends.append((send, send_data))
                recvs.append((recv, recv_data))
            for c in range(cp):  # in issue order on each rank
                first, second = (sends[c], recvs[c]) if c % 2 == 0 else (recvs[c], sends[c])
                self.node(*first)
                self.node(*second)
            for c in range(cp):
                self.edge(held[c], sends[c][0], (0,))
                self.edge(sends[(c - 1) % cp][0], recvs[c][0], (0,))
            for c, rank in enumerate(ring):
                node = self._step(layer, stage, step, template, rank, index, kv, step.flops)
                self.edge(sources[c], node, (0,))
                self.edge(recvs[c][0], node, (1,))
                steps[c].append(node)
            held = [recv for recv, _ in recvs]
        merged = []
        for c, rank in enumerate(ring):
            node = ids.compute_id(layer, step.name, rank)
            data: NodeAttrs = {
                "op": "attn_merge",
                "kind": "compute",
                "name": step.name,
                "layer": layer,
                "stage": stage,
                "devices": [rank],
                "in_shape": step.out_shape,
                "out_shape": step.out_shape,
                "in_placement": template.get("out_placement", "R"),
                "out_placement": template.get("out_placement", "R"),
                "dtype": template["dtype"],
                "flops": MERGE_FLOPS * elements(step.out_shape) * cp,
                "params": 0,
                "bytes": elements(step.out_shape) * self.dtype_bytes * cp,
                "wire_bytes": 0,
                "arity": cp,
                "src": template["src"],
            }
            self.node(node, data)
            for index, partial in enumerate(steps[c]):
                self.edge(partial, node, (index,))
            merged.append(node)
        return merged

    def _gathered(
        self, layer: int, stage: int, dp_rank: int, tp_rank: int, step: Step, template: NodeAttrs, ring: tuple[int, ...], sources: list[NodeRef], blocks: list[str]
    ) -> list[str]:
        mesh, cp = self.mesh, len(ring)
        kv = kv_shape(step.in_shape, self.deployment)
        gathered: Shape = (kv[0], kv[1] * cp, kv[2])
        full = elements(gathered) * self.dtype_bytes
        gather = ids.kv_gather_id(layer, step.name, dp_rank, mesh.dp, tp_rank, mesh.tp)
        placement = template.get("in_placement", "R")
        data: NodeAttrs = {
            "op": "allgather",
            "kind": "comm",
            "name": f"allgather_kv_{step.name}",
            "layer": layer,
            "stage": stage,
            "devices": list(ring),
            "in_shape": kv,
            "out_shape": gathered,
            "in_placement": placement,
            "out_placement": placement,
            "dtype": template["dtype"],
            "flops": 0,
            "params": 0,
            "bytes": elements(kv) * self.dtype_bytes,
            "wire_bytes": COLLECTIVES["allgather"].wire_bytes(cp, full),
            "src": self.src,
            "reason": f"context parallelism (cp {cp}, allgather): every rank's queries attend to the keys and values of the whole sequence",
            "inserted": True,
            # The gradients of the gathered keys and values are summed back to their ranks.
            "backward": "reducescatter",
            "backward_wire_bytes": COLLECTIVES["reducescatter"].wire_bytes(cp, full),
        }
        self.node(gather, data)
        for block in blocks:
            self.edge(block, gather, (0,))
        results = []
        for c, rank in enumerate(ring):
            node = ids.compute_id(layer, step.name, rank)
            attention: NodeAttrs = {
                **template,
                "op": "ring_attention",
                "layer": layer,
                "stage": stage,
                "devices": [rank],
                "operand_shapes": [step.in_shape, gathered],
                "flops": step.flops * cp,
                "arity": 2,
            }
            self.node(node, attention)
            self.edge(sources[c], node, (0,))
            self.edge(gather, node, (1,))
            results.append(node)
        return results
