"""Hugging Face checkpoints: `--load DIR` gives each rank its shard, `--save DIR` writes them back.

CHECKPOINT (written into model.py per spec) names, for each parameter, the checkpoint tensors
it is the concatenation of along its rows (Q, K and V projections into the fused QKV);
TRANSPOSED those stored as [in, out] (GPT-2's Conv1D). A rank computes which rows and columns of
each full parameter it holds with the same function that shards a full state dict, and reads
only those, memory-mapped: no rank ever holds the whole model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from par.codegen.pytorch.runtime.groups import Groups, global_rank
from par.codegen.pytorch.runtime.model import CHECKPOINT, TRANSPOSED
from par.codegen.pytorch.runtime.ops import ungroup_heads
from par.codegen.pytorch.runtime.sharding import (
    EXPERTS_SPLIT,
    VOCABULARY,
    parameter_names,
    shard_parameter,
    stage_sharding,
)
from par.codegen.pytorch.runtime.spec import (
    BY_HEAD,
    DTYPE,
    ENDS,
    EP,
    EXPERTS,
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    LAYERS,
    MOE,
    PP,
    TIED,
    TP,
    VOCAB,
)

# -- Hugging Face checkpoints -------------------------------------------------------------------
# The files of a checkpoint, in the order they are looked for: sharded or single safetensors,
# then PyTorch's pickles (read memory-mapped with torch.load).
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers older checkpoints hold beside the weights: GPT-2's causal masks, Llama's RoPE
# frequencies. The code computes them; loading skips them.
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


# --load and --save: the folders the command line named (None: not given).
PATHS: dict[str, str | None] = {"load": None, "save": None}


def set_checkpoints(load: str | None, save: str | None) -> None:
    PATHS.update(load=load, save=save)


def nothing_to_save(args: argparse.Namespace) -> bool:
    """--save given where no training step runs after which to save: --check or --generate alone."""
    return args.save is not None and not args.steps and (args.check or getattr(args, "generate", None) is not None)


def load_requested(stage: nn.Module, groups: Groups) -> Checkpoint | None:
    """The stage's weights from --load's checkpoint, if given; the checkpoint read."""
    load = PATHS["load"]
    return load_checkpoint(load, stage, groups) if load is not None else None


def save_requested(stage: nn.Module, groups: Groups, loaded: Checkpoint | None) -> None:
    """Writes the stage's weights to --save's folder, if given, in the layout of the checkpoint loaded."""
    save = PATHS["save"]
    if save is not None:
        save_checkpoint(save, dict(stage.named_parameters()), groups, loaded)


class CheckpointError(ValueError):
    """A checkpoint that does not hold this model's parameters; the message says which."""


def splits() -> dict[str, str]:
    """How each parameter of the whole model splits over the tensor-parallel ranks (SHARDING's words)."""
    return {name: split for stage in range(PP) for name, split in stage_sharding(stage).items()}


def pattern_of(name: str) -> tuple[str, int | None]:
    """`layers.5.qkv.weight` -> (`layers.{i}.qkv.weight`, 5); other names are their own pattern."""
    parts = name.split(".", 2)
    if parts[0] == "layers" and len(parts) == 3:
        return f"layers.{{i}}.{parts[2]}", int(parts[1])
    return name, None


def sources_of(name: str) -> list[str]:
    """The checkpoint tensors `name` is the row-wise concatenation of, with its layer filled in."""
    pattern, layer = pattern_of(name)
    return [source.format(i=layer) for source in CHECKPOINT[pattern]]


def expected_names() -> list[str]:
    """Every checkpoint tensor the whole model reads, in CHECKPOINT's order, layer by layer."""
    names = []
    for pattern, sources in CHECKPOINT.items():
        layers = range(LAYERS) if "{i}" in pattern else [None]
        if MOE:
            experts = [expert for source in sources for expert in each_expert(source)]
            names += [expert.format(i=layer) for layer in layers for expert in experts]
        else:
            names += [source.format(i=layer) for layer in layers for source in sources]
    return sorted(set(names), key=names.index)


class Checkpoint:
    """The tensors of a checkpoint folder, read lazily: only the slices asked for leave the files."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._opened: dict[str, Any] = {}
        index = next((self.directory / name for name in INDEXES if (self.directory / name).is_file()), None)
        self.sharded = index is not None
        if index is not None:
            self.files: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            single = next((name for name in SINGLE_FILES if (self.directory / name).is_file()), None)
            if single is None:
                raise CheckpointError(f"{directory}: no {', '.join(INDEXES + SINGLE_FILES)}")
            self.files = dict.fromkeys(self._open(single).keys(), single)

    def _open(self, file: str) -> Any:
        if file not in self._opened:
            path = self.directory / file
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                self._opened[file] = safe_open(str(path), framework="pt")
            else:
                self._opened[file] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return self._opened[file]

    def resolve(self, name: str) -> str:
        """The name the checkpoint holds `name` under: as written, or without the base model's
        prefix (`transformer.h.0...` is `h.0...` in checkpoints saved from GPT2Model)."""
        if name in self.files:
            return name
        bare = name.split(".", 1)[-1]
        return bare if bare in self.files else name

    def tensor(self, name: str) -> Any:
        """A handle on the tensor that slices read from: a safetensors slice, or a memory-mapped tensor."""
        file = self.files[name]
        opened = self._open(file)
        return opened.get_slice(name) if file.endswith(".safetensors") else opened[name]

    def shape(self, name: str) -> list[int]:
        handle = self.tensor(name)
        return list(handle.get_shape()) if hasattr(handle, "get_shape") else list(handle.shape)

    def dtype(self, name: str) -> torch.dtype:
        handle = self.tensor(name)
        return SAFETENSORS_DTYPES[handle.get_dtype()] if hasattr(handle, "get_dtype") else handle.dtype

    def written(self) -> set[str]:
        """The checkpoint names this model's parameters are saved under."""
        return {self.resolve(name) for name in expected_names()}

    def check(self) -> None:
        """Raises CheckpointError unless the checkpoint holds exactly the tensors CHECKPOINT reads
        (besides buffers): the same verdict on every rank, from the index alone."""
        wanted = self.written()
        missing = [name for name in expected_names() if self.resolve(name) not in self.files]
        unread = sorted(name for name in self.files if name not in wanted and not name.endswith(BUFFERS))
        if TIED and unread == [self.resolve("lm_head.weight")]:
            unread = []  # a pickled checkpoint of a tied model holds the head too: the embedding's copy
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors this model needs are missing ({', '.join(missing[:4])}, ...)")
        if unread:
            problems.append(f"{len(unread)} tensors this model has no parameter for ({', '.join(unread[:4])}, ...)")
        if problems:
            raise CheckpointError(f"{self.directory}: " + "; ".join(problems))


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def runs(indices: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of an increasing index vector, in order."""
    found: list[tuple[int, int]] = []
    for index in indices.tolist():
        if found and found[-1][1] == index:
            found[-1] = (found[-1][0], index + 1)
        else:
            found.append((index, index + 1))
    return found


def held_indices(full: int, split: str, tp_rank: int, dim: int) -> torch.Tensor:
    """The indices along `dim` of a full parameter that `tp_rank` holds: shard_parameter applied
    to the indices themselves, so loading shards exactly as shard_state_dict does."""
    shape = [1, 1]
    shape[dim] = full
    return shard_parameter(torch.arange(full).view(shape), split, tp_rank).reshape(-1)


def read_parameter(checkpoint: Checkpoint, name: str, split: str, local: torch.Size, tp_rank: int) -> torch.Tensor:
    """This rank's shard of parameter `name` (local shape `local`, split as `split` says), read from the checkpoint."""
    rows = local[0] * (TP if split.startswith("rows") else 1)
    cols = local[1] * (TP if split.startswith("columns") else 1) if len(local) == 2 else None
    sources = [checkpoint.resolve(source) for source in sources_of(name)]
    pattern, _ = pattern_of(name)
    transposed = pattern in TRANSPOSED
    extents = []
    for source in sources:
        shape = checkpoint.shape(source)
        extents.append(shape[::-1] if transposed else shape)
    total = sum(extent[0] for extent in extents)
    padded = split == VOCABULARY and 0 <= rows - total < TP
    wrong = [source for source, extent in zip(sources, extents, strict=True) if extent[1:] != ([cols] if cols else [])]
    if (total != rows and not padded) or wrong:
        shapes = " + ".join(str(tuple(extent)) for extent in extents)
        want = (rows, cols) if cols else (rows,)
        raise CheckpointError(
            f"{name}: the checkpoint's {', '.join(sources)} ({shapes}) do not make this model's {want}"
        )
    row_runs = runs(held_indices(rows, split, tp_rank, 0) if split.startswith("rows") else torch.arange(rows))
    col_runs = (
        [(0, cols)]
        if cols is None
        else runs(held_indices(cols, split, tp_rank, 1) if split.startswith("columns") else torch.arange(cols))
    )
    parts = []
    for start, stop in row_runs:
        offset = 0
        for source, extent in zip(sources, extents, strict=True):
            low, high = max(start, offset), min(stop, offset + extent[0])
            if low < high:
                parts.append(_read_block(checkpoint, source, (low - offset, high - offset), col_runs, transposed))
            offset += extent[0]
        if stop > total:  # vocabulary padding
            pad = [stop - max(start, total)] + ([local[1]] if cols else [])
            parts.append(torch.zeros(pad, dtype=parts[-1].dtype if parts else DTYPE))
    return torch.cat(parts)


def _read_block(checkpoint: Checkpoint, source: str, rows: tuple[int, int], col_runs, transposed: bool) -> torch.Tensor:
    handle = checkpoint.tensor(source)
    if len(checkpoint.shape(source)) == 1:
        return handle[rows[0] : rows[1]]
    if transposed:
        return torch.cat([handle[c0:c1, rows[0] : rows[1]].t() for c0, c1 in col_runs], dim=1)
    return torch.cat([handle[rows[0] : rows[1], c0:c1] for c0, c1 in col_runs], dim=1)


def load_checkpoint(directory: str, stage: nn.Module, groups: Groups) -> Checkpoint:
    """Fills `stage`'s parameters with this rank's shards of the checkpoint in `directory`.

    Every rank checks the checkpoint's names first (the same verdict everywhere); a shape that
    does not fit, or a folder or file that cannot be read, on one rank fails every rank, before
    any of the model's collectives: whatever goes wrong, every rank reaches the verdict AllReduce.
    """
    failed: list[str] = []
    try:
        checkpoint = Checkpoint(directory)
        checkpoint.check()
        split = stage_sharding(groups.stage)
        with torch.no_grad():
            for name, param in stage.named_parameters():
                try:
                    if MOE and split[name].startswith(EXPERTS_SPLIT):
                        shard = read_experts(checkpoint, name, split[name], param.shape, groups)
                    else:
                        shard = read_parameter(checkpoint, name, split[name], param.shape, groups.tp_rank)
                    param.copy_(shard)  # in the parameter's dtype
                except CheckpointError as error:
                    failed.append(str(error))
    except CheckpointError as error:
        failed.append(str(error))
    except Exception as error:  # an unreadable file or folder (OSError), a malformed index (KeyError, ValueError)
        failed.append(f"{directory}: {type(error).__name__}: {error}")
    verdict = torch.tensor([len(failed)], device=next(stage.parameters()).device)
    dist.all_reduce(verdict)  # not one of the model's collectives: every rank learns if one failed
    if failed or verdict.item():
        raise CheckpointError(failed[0] if failed else "another rank could not read its shard of the checkpoint")
    return checkpoint


# -- The experts' weights ----------------------------------------------------------------------
# A weight of the local experts, [LOCAL_EXPERTS, out, in], stacks one checkpoint tensor per
# expert, whose CHECKPOINT name holds {e}, the expert's index in the whole model (Mixtral's
# `block_sparse_moe.experts.{e}.w1.weight`). A rank reads only its experts, and of each only its
# rows or columns under tensor parallelism.


def each_expert(source: str) -> list[str]:
    """A checkpoint name with {e}: one name per expert of the model; any other: itself."""
    return [source.replace("{e}", str(e)) for e in range(EXPERTS)] if "{e}" in source else [source]


def expert_sources(name: str) -> list[str]:
    """The checkpoint tensors of experts' weight `name`, one per expert of the model, in order."""
    pattern, layer = pattern_of(name)
    (source,) = CHECKPOINT[pattern]
    return [expert.format(i=layer) for expert in each_expert(source)]


def held_experts(split: str, dp_rank: int, tp_rank: int, full: tuple[int, int]) -> list[torch.Tensor]:
    """The experts, rows and columns of a full [EXPERTS, out, in] weight that a rank of replica
    `dp_rank` holds: shard_parameter applied to the indices along each dim (broadcast views, no
    copy), so loading shards exactly as shard_state_dict does."""
    ep_rank = dp_rank % EP  # its place in its expert-parallel group
    shape = (EXPERTS, *full)
    held = []
    for dim, size in enumerate(shape):
        view = [1, 1, 1]
        view[dim] = size
        indices = shard_parameter(torch.arange(size).view(view).expand(shape), split, tp_rank, ep_rank)
        along: list[int | slice] = [0, 0, 0]
        along[dim] = slice(None)
        held.append(indices[tuple(along)])
    return held


def read_experts(checkpoint: Checkpoint, name: str, split: str, local: torch.Size, groups: Groups) -> torch.Tensor:
    """This rank's local experts of weight `name` (local shape `local`), each read from its own tensor."""
    full = (local[1] * (TP if split.endswith("rows") else 1), local[2] * (TP if split.endswith("columns") else 1))
    sources = [checkpoint.resolve(source) for source in expert_sources(name)]
    wrong = [source for source in sources if checkpoint.shape(source) != list(full)]
    if wrong:
        shape = tuple(checkpoint.shape(wrong[0]))
        raise CheckpointError(f"{name}: the checkpoint's {wrong[0]} {shape} is not an expert's {full} of this model")
    experts, rows, cols = held_experts(split, groups.dp_rank, groups.tp_rank, full)
    col_runs = runs(cols)
    parts = [
        torch.cat([_read_block(checkpoint, sources[e], (r0, r1), col_runs, False) for r0, r1 in runs(rows)])
        for e in experts.tolist()
    ]
    return torch.stack(parts)


def expert_owners(name: str) -> list[list[int]]:
    """The global ranks that hold parts of experts' weight `name` on its stage: per member of the
    first expert-parallel group (the first EP replicas), its tensor-parallel ranks in order."""
    stage = next(s for s in range(PP) if name in parameter_names(global_rank(0, s, 0, 0)))
    return [[global_rank(d, stage, t, 0) for t in range(TP)] for d in range(EP)]


def gather_experts(name: str, split: str, tensors: dict[str, torch.Tensor], groups: Groups) -> torch.Tensor | None:
    """Rank 0 gets experts' weight `name` whole, [EXPERTS, out, in] in fp32; None elsewhere: the
    owners send their shard's shape, then the shard, one after the other, as gather_parameter does."""
    owners = expert_owners(name)
    if groups.rank != 0:
        if any(groups.rank in member for member in owners):
            send_part(tensors[name])
        return None
    members = []
    for member in owners:
        parts = [part_from(rank, name, tensors) for rank in member]
        dim = 1 if split.endswith("rows") else 2  # the inverse of shard_parameter's split of an expert
        members.append(torch.cat(parts, dim=dim) if split != EXPERTS_SPLIT else parts[0])
    return torch.cat(members)


def expert_tensors(name: str, full: torch.Tensor, checkpoint: Checkpoint | None) -> dict[str, torch.Tensor]:
    """A whole experts' weight as its checkpoint tensors, one per expert."""
    names = [checkpoint.resolve(source) if checkpoint else source for source in expert_sources(name)]
    return {hf: expert.contiguous() for hf, expert in zip(names, full, strict=True)}


# -- Saving -------------------------------------------------------------------------------------


def every_parameter() -> list[str]:
    """The names of the whole model's parameters, stage after stage, each once."""
    names = [name for stage in range(PP) for name in parameter_names(global_rank(0, stage, 0, 0))]
    return list(dict.fromkeys(names))


def owners(name: str) -> list[int]:
    """The global ranks of the first replica that hold parts of `name`, in tp order (its first stage)."""
    stage = next(s for s in range(PP) if name in parameter_names(global_rank(0, s, 0, 0)))
    return [global_rank(0, stage, t, 0) for t in range(TP)]


def whole(split: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """The full parameter from its TP shards: the inverse of shard_parameter."""
    if split == "replicated":
        return parts[0]
    dim = 0 if split.startswith("rows") else 1
    full = torch.cat(parts, dim=dim)
    if BY_HEAD and split.endswith("by head"):
        full = ungroup_heads(full, dim)
    return full


def source_rows(name: str, checkpoint: Checkpoint | None) -> list[int]:
    """The rows each checkpoint tensor of `name` gives it: the loaded checkpoint's, or the model's sizes."""
    pattern, _ = pattern_of(name)
    if checkpoint is not None:
        shapes = [checkpoint.shape(checkpoint.resolve(source)) for source in sources_of(name)]
        return [shape[-1] if pattern in TRANSPOSED else shape[0] for shape in shapes]
    if len(CHECKPOINT[pattern]) == 3:  # a fused Q, K, V
        return [HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM]
    return [-1]


def checkpoint_tensors(name: str, full: torch.Tensor, checkpoint: Checkpoint | None) -> dict[str, torch.Tensor]:
    """A full parameter as the checkpoint tensors it came from: split along the rows, padding dropped."""
    pattern, _ = pattern_of(name)
    if MOE and "{e}" in CHECKPOINT[pattern][0]:
        return expert_tensors(name, full, checkpoint)
    if ENDS and pattern in ("embed.weight", "head.weight"):
        full = full[:VOCAB]
    sizes = [size if size >= 0 else full.shape[0] for size in source_rows(name, checkpoint)]
    names = [checkpoint.resolve(source) if checkpoint else source for source in sources_of(name)]
    pieces = full[: sum(sizes)].split(sizes)
    return {
        hf: (piece.t() if pattern in TRANSPOSED else piece).contiguous()
        for hf, piece in zip(names, pieces, strict=True)
    }


def gather_parameter(name: str, split: str, tensors: dict[str, torch.Tensor], groups: Groups) -> torch.Tensor | None:
    """Rank 0 gets the full parameter `name`, in fp32 (exact for fp16 and bf16); None elsewhere.

    Its owners send their shard's shape, then the shard, to rank 0, one after the other; every
    rank walks the parameters in the same order, so sends and receives pair up.
    """
    ranks = owners(name)
    if groups.rank != 0:
        if groups.rank in ranks:
            send_part(tensors[name])
        return None
    return whole(split, [part_from(rank, name, tensors) for rank in ranks])


# A shard's shape travels as 3 numbers (an experts' weight has 3 dims), -1 past its own.
SHAPE_NUMBERS = 3


def send_part(shard: torch.Tensor) -> None:
    """This rank's shard to rank 0, in fp32: its shape, then its values."""
    shard = shard.detach().float().contiguous()
    dist.send(torch.tensor([*shard.shape, -1, -1][:SHAPE_NUMBERS], device=shard.device), dst=0)
    dist.send(shard, dst=0)


def part_from(rank: int, name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """On rank 0: `rank`'s shard of `name` (`send_part`), or its own, in fp32 on the CPU."""
    if rank == 0:
        return tensors[name].detach().float().cpu()
    device = next(iter(tensors.values())).device
    shape = torch.empty(SHAPE_NUMBERS, dtype=torch.int64, device=device)
    dist.recv(shape, src=rank)
    part = torch.empty([size for size in shape.tolist() if size >= 0], dtype=torch.float32, device=device)
    dist.recv(part, src=rank)
    return part.cpu()


def save_checkpoint(directory: str, tensors: dict[str, torch.Tensor], groups: Groups, like: Checkpoint | None) -> None:
    """Writes the model's tensors (this rank's shards by parameter name: the weights, or their
    gradients) as a Hugging Face checkpoint in `directory`.

    Rank 0 gathers one parameter at a time and writes each file as soon as it holds all of its
    tensors: the names, dtypes and files of `like` (the checkpoint --load read, whose config.json
    it copies), or one model.safetensors in DTYPE. Files are written under a temporary name and
    renamed, so a failed save leaves no half-written file.
    """
    out = Path(directory)
    writer = groups.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, set[str]] = {}
    if like is not None:
        for hf in like.written():
            expected.setdefault(like.files[hf], set()).add(hf)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    index: dict[str, str] = {}
    size = 0
    split = splits()
    for name in every_parameter():
        if MOE and split[name].startswith(EXPERTS_SPLIT):
            full = gather_experts(name, split[name], tensors, groups)
        else:
            full = gather_parameter(name, split[name], tensors, groups)
        if full is None:
            continue
        for hf, tensor in checkpoint_tensors(name, full, like).items():
            file = like.files[hf] if like is not None else "model.safetensors"
            tensor = tensor.to(like.dtype(hf) if like is not None else DTYPE)
            pending.setdefault(file, {})[hf] = tensor
            index[hf] = file
            size += tensor.numel() * tensor.element_size()
        for file in [file for file in pending if like is not None and set(pending[file]) == expected[file]]:
            _write(out / file, pending.pop(file))
    if not writer:
        return
    for file in list(pending):
        _write(out / file, pending.pop(file))
    if like is not None and like.sharded:
        weight_map = dict(sorted(index.items()))
        text = json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2) + "\n"
        index_name = INDEXES[0] if like.files[next(iter(index))].endswith(".safetensors") else INDEXES[1]
        temporary = out / f".{index_name}.partial"
        temporary.write_text(text)
        os.replace(temporary, out / index_name)
    if like is not None:
        for extra in ("config.json", "generation_config.json"):
            if (like.directory / extra).is_file():
                shutil.copyfile(like.directory / extra, out / extra)


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    if path.name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, str(temporary), metadata={"format": "pt"})
    else:
        torch.save(tensors, temporary)
    os.replace(temporary, path)
