"""The collective trace of `--trace DIR`: every collective a rank issues, in order."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

# -- Collective trace ---------------------------------------------------------------------------
# With --trace DIR, every process writes DIR/rank<r>.json: each collective it issues, in order,
# with its phase ("forward" or "backward" of a microbatch, or "step" for the gradient reduction
# after the last microbatch), the microbatch, the collective (allreduce, allgather,
# reducescatter, alltoall, dispatch, combine, send, recv), the global ranks of its group ([this
# rank] and `peer` for send and recv) and the bytes of this rank's input; a token dispatch or
# combine also records its split sizes, the rows sent to and received from each member
# (`splits`: [send, receive]), which differ between ranks and steps. The forward events of every
# microbatch are the DAG's collectives on this rank, in DAG order. Generation records "prefill"
# or "decode" with its `step` (0: the prefill): each step's events of a microbatch are those of
# dag.prefill or dag.decode on this rank, in DAG order.


class CollectiveTrace:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.phase = "step"
        self.microbatch: int | None = None
        self.step: int | None = None  # generation's step (0: prefill)

    def record(
        self, op: str, tensor: torch.Tensor, group: list[int], peer: int | None = None, split_sizes: tuple | None = None
    ) -> None:
        event: dict[str, object] = {
            "phase": self.phase,
            "microbatch": self.microbatch,
            "op": op,
            "group": group,
            "bytes": tensor.numel() * tensor.element_size(),
        }
        if self.step is not None:
            event["step"] = self.step
        if peer is not None:
            event["peer"] = peer
        if split_sizes is not None:
            event["splits"] = [list(sizes) for sizes in split_sizes]
        self.events.append(event)

    def write(self, folder: str, rank: int) -> None:
        path = Path(folder) / f"rank{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": rank, "events": self.events}, indent=1) + "\n")


TRACE: CollectiveTrace | None = None


def start_trace() -> CollectiveTrace:
    """From now on, record every collective."""
    global TRACE
    TRACE = CollectiveTrace()
    return TRACE


def set_phase(phase: str, microbatch: int | None = None, step: int | None = None) -> None:
    if TRACE is not None:
        TRACE.phase, TRACE.microbatch, TRACE.step = phase, microbatch, step


def _record(
    op: str,
    tensor: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    peer: int | None = None,
    split_sizes: tuple | None = None,
) -> None:
    if TRACE is not None:
        ranks = [dist.get_rank()] if group is None else dist.get_process_group_ranks(group)
        TRACE.record(op, tensor, ranks, peer, split_sizes)
