"""Process groups: this process's place in the mesh, with the rank formula of docs/cost.md."""

from __future__ import annotations

import datetime

import torch.distributed as dist

from par.codegen.pytorch.runtime.spec import CP, DP, EP, PP, TIED, TP

# -- Process groups -----------------------------------------------------------------------------


def coordinates(rank: int) -> tuple[int, int, int]:
    """(dp_rank, stage, tp_rank) of a global rank: tp varies fastest, then cp, then pp, then dp."""
    return rank // (TP * CP * PP), rank // (TP * CP) % PP, rank % TP


def cp_coordinate(rank: int) -> int:
    """The context-parallel rank of a global rank: which part of the sequence it holds."""
    return rank // TP % CP


def global_rank(dp_rank: int, stage: int, tp_rank: int, cp_rank: int) -> int:
    return ((dp_rank * PP + stage) * CP + cp_rank) * TP + tp_rank


# ZeRO's parts: one per rank that reduces the same gradients, every replica's and every part of the sequence's.
SHARDS = DP * CP


def shard_index(rank: int) -> int:
    """Which of the SHARDS parts a global rank keeps: its place in its gradient group (`Groups.dp`)."""
    return coordinates(rank)[0] * CP + cp_coordinate(rank)


class Groups:
    """This process's place in the mesh and the process groups it belongs to.

    Every process creates every group, in the same order, as torch.distributed requires.
    """

    def __init__(self, rank: int, timeout: datetime.timedelta) -> None:
        self.rank = rank
        self.dp_rank, self.stage, self.tp_rank = coordinates(rank)
        self.cp_rank = cp_coordinate(rank)
        if TP > 1:
            # the tensor-parallel ranks of this stage, part of the sequence and replica
            tp_groups = {
                (d, s, c): dist.new_group([global_rank(d, s, t, c) for t in range(TP)], timeout=timeout)
                for d in range(DP)
                for s in range(PP)
                for c in range(CP)
            }
            self.tp = tp_groups[self.dp_rank, self.stage, self.cp_rank]
        if CP > 1:
            # the ring: the parts of the sequence of this stage, tensor-parallel rank and replica, in cp rank order
            rings = {
                (d, s, t): [global_rank(d, s, t, c) for c in range(CP)]
                for d in range(DP)
                for s in range(PP)
                for t in range(TP)
            }
            cp_groups = {key: dist.new_group(ring, timeout=timeout) for key, ring in rings.items()}
            self.cp_ranks = rings[self.dp_rank, self.stage, self.tp_rank]
            self.cp = cp_groups[self.dp_rank, self.stage, self.tp_rank]
        if DP * CP > 1:
            # the ranks holding the same shard: every replica's, and every part of the sequence's
            # (Mesh.gradient_group_of): their gradients add up to the batch's
            dp_groups = {
                (s, t): dist.new_group([global_rank(d, s, t, c) for d in range(DP) for c in range(CP)], timeout=timeout)
                for s in range(PP)
                for t in range(TP)
            }
            self.dp = dp_groups[self.stage, self.tp_rank]
        if EP > 1:
            # docs/language.md: the same stage and tensor-parallel rank in EP consecutive replicas
            replicas = {b: range(b * EP, (b + 1) * EP) for b in range(DP // EP)}
            ep_groups = {
                (b, s, t): dist.new_group([global_rank(d, s, t, 0) for d in replicas[b]], timeout=timeout)
                for b in range(DP // EP)
                for s in range(PP)
                for t in range(TP)
            }
            self.ep = ep_groups[self.dp_rank // EP, self.stage, self.tp_rank]
        if EP > 1 and DP > EP:
            # the ranks holding the same experts, one in each expert-parallel group
            expert_dp_groups = {
                (e, s, t): dist.new_group([global_rank(d, s, t, 0) for d in range(e, DP, EP)], timeout=timeout)
                for e in range(EP)
                for s in range(PP)
                for t in range(TP)
            }
            self.expert_dp = expert_dp_groups[self.dp_rank % EP, self.stage, self.tp_rank]
        if TIED and PP > 1:
            # Megatron's embedding group: the ranks holding the same rows of the tied matrix, on
            # the first stage (the embedding) and the last (the head)
            embedding_groups = {
                (d, c, t): dist.new_group([global_rank(d, 0, t, c), global_rank(d, PP - 1, t, c)], timeout=timeout)
                for d in range(DP)
                for c in range(CP)
                for t in range(TP)
            }
            self.embedding = embedding_groups[self.dp_rank, self.cp_rank, self.tp_rank]
