"""Process groups: this process's place in the mesh, with the rank formula of docs/cost.md."""

from __future__ import annotations

import datetime

import torch.distributed as dist

from par.codegen.pytorch.runtime.spec import DP, EP, PP, TIED, TP

# -- Process groups -----------------------------------------------------------------------------


def coordinates(rank: int) -> tuple[int, int, int]:
    """(dp_rank, stage, tp_rank) of a global rank: tp varies fastest, then pp, then dp."""
    return rank // (TP * PP), rank // TP % PP, rank % TP


def global_rank(dp_rank: int, stage: int, tp_rank: int) -> int:
    return (dp_rank * PP + stage) * TP + tp_rank


class Groups:
    """This process's place in the mesh and the process groups it belongs to.

    Every process creates every group, in the same order, as torch.distributed requires.
    """

    def __init__(self, rank: int, timeout: datetime.timedelta) -> None:
        self.rank = rank
        self.dp_rank, self.stage, self.tp_rank = coordinates(rank)
        if TP > 1:
            # the tensor-parallel ranks of this stage and replica
            tp_groups = {
                (d, s): dist.new_group([global_rank(d, s, t) for t in range(TP)], timeout=timeout)
                for d in range(DP)
                for s in range(PP)
            }
            self.tp = tp_groups[self.dp_rank, self.stage]
        if DP > 1:
            # the ranks holding the same shard in every replica
            dp_groups = {
                (s, t): dist.new_group([global_rank(d, s, t) for d in range(DP)], timeout=timeout)
                for s in range(PP)
                for t in range(TP)
            }
            self.dp = dp_groups[self.stage, self.tp_rank]
        if EP > 1:
            # docs/language.md: the same stage and tensor-parallel rank in EP consecutive replicas
            ep_groups = {
                (b, s, t): dist.new_group([global_rank(d, s, t) for d in range(b * EP, (b + 1) * EP)], timeout=timeout)
                for b in range(DP // EP)
                for s in range(PP)
                for t in range(TP)
            }
            self.ep = ep_groups[self.dp_rank // EP, self.stage, self.tp_rank]
        if EP > 1 and DP > EP:
            # the ranks holding the same experts, one in each expert-parallel group
            expert_dp_groups = {
                (e, s, t): dist.new_group([global_rank(d, s, t) for d in range(e, DP, EP)], timeout=timeout)
                for e in range(EP)
                for s in range(PP)
                for t in range(TP)
            }
            self.expert_dp = expert_dp_groups[self.dp_rank % EP, self.stage, self.tp_rank]
        if TIED and PP > 1:
            # Megatron's embedding group: the ranks holding the same rows of the tied matrix, on
            # the first stage (the embedding) and the last (the head)
            embedding_groups = {
                (d, t): dist.new_group([global_rank(d, 0, t), global_rank(d, PP - 1, t)], timeout=timeout)
                for d in range(DP)
                for t in range(TP)
            }
            self.embedding = embedding_groups[self.dp_rank, self.tp_rank]
