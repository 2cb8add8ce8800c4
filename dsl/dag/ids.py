"""Node ids of the DAG (README: The DAG). Every module that names nodes uses these."""

from __future__ import annotations

from typing import Final

INPUT: Final = "input"
OUTPUT: Final = "output"


# Numbers, or placeholders such as `<i>` where generated code names a node of any layer.
def compute_id(layer: int | str, name: str, rank: int | str) -> str:
    return f"layer_{layer}_{name}_gpu{rank}"


def collective_id(layer: int | str, name: str, dp_rank: int | str, dp: int, cp_rank: int = 0, cp: int = 1) -> str:
    """`name` is `<kind>_<label>`; replicas of a data-parallel mesh get a `_dp<d>` suffix, the
    parts of the sequence of a context-parallel one a `_cp<c>` suffix."""
    suffix = (f"_dp{dp_rank}" if dp > 1 else "") + (f"_cp{cp_rank}" if cp > 1 else "")
    return f"layer_{layer}_{name}{suffix}"


# Context parallelism (par.dsl.dag.ring): the ring steps of attention `name` on one rank.
def ring_step_id(layer: int, name: str, step: int, rank: int) -> str:
    return f"layer_{layer}_{name}_ring{step}_gpu{rank}"


def ring_send_id(layer: int, name: str, step: int, rank: int) -> str:
    return f"layer_{layer}_{name}_kvsend{step}_gpu{rank}"


def ring_recv_id(layer: int, name: str, step: int, rank: int) -> str:
    return f"layer_{layer}_{name}_kvrecv{step}_gpu{rank}"


def kv_gather_id(layer: int, name: str, dp_rank: int, dp: int, tp_rank: int, tp: int) -> str:
    """The AllGather of keys and values over one context-parallel group (`cp_attention allgather`)."""
    return f"layer_{layer}_allgather_kv_{name}" + (f"_dp{dp_rank}" if dp > 1 else "") + (f"_tp{tp_rank}" if tp > 1 else "")


def routing_id(layer: int | str, name: str, group: int | str, groups: int, tp_rank: int | str, tp: int) -> str:
    """A token routing of expert-parallel group `group` (of `groups` per stage), one per tensor-parallel rank."""
    return f"layer_{layer}_{name}" + (f"_ep{group}" if groups > 1 else "") + (f"_tp{tp_rank}" if tp > 1 else "")


def send_id(stage: int, rank: int) -> str:
    return f"stage_{stage}_send_gpu{rank}"


def recv_id(stage: int, rank: int) -> str:
    return f"stage_{stage}_recv_gpu{rank}"


# A decode step's tokens, from the last stage (where the step before sampled them) to the first.
def token_send_id(rank: int) -> str:
    return f"token_send_gpu{rank}"


def token_recv_id(rank: int) -> str:
    return f"token_recv_gpu{rank}"


# Interleaved: the boundary out of (send) or into (recv) model chunk `chunk`.
def chunk_send_id(chunk: int, rank: int) -> str:
    return f"chunk_{chunk}_send_gpu{rank}"


def chunk_recv_id(chunk: int, rank: int) -> str:
    return f"chunk_{chunk}_recv_gpu{rank}"


def input_slice_id(rank: int) -> str:
    return f"input_slice_gpu{rank}"


# The model's ends (embedding, final norm, head, loss) belong to no layer.
def end_id(name: str, rank: int | str) -> str:
    return f"{name}_gpu{rank}"


def end_collective_id(name: str, dp_rank: int | str, dp: int, cp_rank: int = 0, cp: int = 1) -> str:
    suffix = (f"_dp{dp_rank}" if dp > 1 else "") + (f"_cp{cp_rank}" if cp > 1 else "")
    return f"{name}{suffix}"
