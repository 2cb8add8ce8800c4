"""Sequence-parallel activation memory as Megatron keeps it: a gathered tensor's shard saved, the whole re-gathered."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from par.codegen.pytorch.runtime.collectives import _all_gather
from par.codegen.pytorch.runtime.spec import TP

# -- Re-gathering in backward (--regather) -------------------------------------------------------
# An AllGather's output is saved for backward by the linear (or attention) that reads it: the
# whole tensor, TP times its shard. With --regather, the shard is saved instead and gathered
# again when the backward first needs it (Megatron's sequence-parallel memory): an AllGather
# more per gathered tensor and microbatch in backward, traded for TP - 1 shards less kept.


class _Regather:
    """The shard of a gathered tensor and how to gather it again, saved in place of the whole."""

    def __init__(self, shard: torch.Tensor, dim: int, group: dist.ProcessGroup) -> None:
        self.shard, self.dim, self.group = shard, dim, group
        self.gathered: torch.Tensor | None = None

    def unpack(self) -> torch.Tensor:
        if self.gathered is None:  # the first backward op that needs it gathers it, the others reuse it
            self.gathered = _all_gather(self.shard, self.dim, self.group)
        return self.gathered


REGATHER = False
# the tensors gathered in the forward now running, by the address of their memory; held until
# it ends, so no address is reused. A backward op may save a view of one (a linear flattens
# its input), so a saved tensor is matched by its memory and re-viewed the same way.
GATHERED: dict[int, _Regather] = {}
HELD: list[torch.Tensor] = []
Saved = tuple[_Regather, torch.Size, tuple[int, ...], int]


def set_regather(enabled: bool) -> None:
    global REGATHER
    REGATHER = enabled


def remember_gathered(whole: torch.Tensor, shard: torch.Tensor, dim: int, group: dist.ProcessGroup) -> None:
    """With --regather: `whole`, gathered from `shard`, is saved as its shard."""
    if REGATHER:
        GATHERED[whole.untyped_storage().data_ptr()] = _Regather(shard.detach(), dim, group)
        HELD.append(whole)


def _pack(tensor: torch.Tensor) -> torch.Tensor | Saved:
    found = GATHERED.get(tensor.untyped_storage().data_ptr())
    return tensor if found is None else (found, tensor.size(), tensor.stride(), int(tensor.storage_offset()))


def _unpack(saved: torch.Tensor | Saved) -> torch.Tensor:
    if isinstance(saved, torch.Tensor):
        return saved
    regather, size, stride, offset = saved
    return regather.unpack().as_strided(size, stride, offset)


def stage_forward(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """stage(x); with --regather, every gathered tensor a backward op saves is saved as its shard."""
    if TP > 1 and REGATHER:
        try:
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                return stage(x)
        finally:
            GATHERED.clear()
            HELD.clear()
    else:
        return stage(x)
