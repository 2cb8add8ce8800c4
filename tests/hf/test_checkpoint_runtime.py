"""The checkpoint runtime (`--load`, `--save`) as an ordinary module, on hand-made safetensors files.

Expected shards are sliced here by hand from the checkpoint tensors (Q heads of a rank, then
its K and V heads), not with the runtime's own sharding function.
"""

from __future__ import annotations

import json
from types import SimpleNamespace as Place

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
import torch.distributed as dist  # noqa: E402

from par.codegen.pytorch.runtime import checkpoint, model, ops, sharding  # noqa: E402
from par.codegen.pytorch.runtime.groups import Groups  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 4, 2, 2, 8
QKV = ("model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight",
       "model.layers.{i}.self_attn.v_proj.weight")


class Recorded:
    """A checkpoint handle that counts the elements each slice reads."""

    def __init__(self, handle, log):
        self.handle, self.log = handle, log

    def __getitem__(self, index):
        found = self.handle[index]
        self.log.append(found.numel())
        return found

    def __getattr__(self, name):
        return getattr(self.handle, name)


def opened(folder, monkeypatch):
    found = checkpoint.Checkpoint(folder)
    log: list[int] = []
    original = found.tensor
    monkeypatch.setattr(found, "tensor", lambda name: Recorded(original(name), log))
    return found, log


@pytest.fixture
def tp2(monkeypatch):
    """Two tensor-parallel ranks, grouped-query heads: the constants every module reads."""
    for module in (checkpoint, sharding, ops):
        monkeypatch.setattr(module, "TP", 2)
    for module in (checkpoint, ops):
        for name, value in (("HEADS", HEADS), ("KV_HEADS", KV_HEADS), ("HEAD_DIM", HEAD_DIM)):
            monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(sharding, "BY_HEAD", True)
    monkeypatch.setattr(checkpoint, "BY_HEAD", True)


def test_each_rank_reads_only_its_q_k_and_v_heads_of_the_fused_qkv(tmp_path, monkeypatch, tp2):
    q, k, v = (torch.randn(heads * HEAD_DIM, HIDDEN) for heads in (HEADS, KV_HEADS, KV_HEADS))
    safetensors_torch.save_file({name.format(i=3): t for name, t in zip(QKV, (q, k, v), strict=True)}, tmp_path / "model.safetensors")
    monkeypatch.setattr(checkpoint, "CHECKPOINT", {"layers.{i}.qkv.weight": QKV})
    rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM // 2
    for rank in range(2):
        found, log = opened(tmp_path, monkeypatch)
        shard = checkpoint.read_parameter(found, "layers.3.qkv.weight", "rows by head", torch.Size([rows, HIDDEN]), rank)
        q_rows, kv_rows = HEADS // 2 * HEAD_DIM, KV_HEADS // 2 * HEAD_DIM
        expected = torch.cat([q[rank * q_rows : (rank + 1) * q_rows], k[rank * kv_rows : (rank + 1) * kv_rows],
                              v[rank * kv_rows : (rank + 1) * kv_rows]])
        assert torch.equal(shard, expected)
        assert sum(log) == shard.numel()  # nothing but this rank's rows left the file


def test_a_transposed_conv1d_weight_split_by_columns(tmp_path, monkeypatch, tp2):
    conv = torch.randn(HIDDEN, HIDDEN + 2)  # GPT-2's Conv1D: [in, out]; ours is [out, in]
    safetensors_torch.save_file({"h.0.attn.c_proj.weight": conv}, tmp_path / "model.safetensors")
    monkeypatch.setattr(checkpoint, "CHECKPOINT", {"layers.{i}.attn.weight": ("transformer.h.{i}.attn.c_proj.weight",)})
    monkeypatch.setattr(checkpoint, "TRANSPOSED", ("layers.{i}.attn.weight",))
    found, log = opened(tmp_path, monkeypatch)  # saved without the `transformer.` prefix, as GPT2Model saves
    shard = checkpoint.read_parameter(found, "layers.0.attn.weight", "columns", torch.Size([HIDDEN + 2, HIDDEN // 2]), 1)
    assert torch.equal(shard, conv.t()[:, HIDDEN // 2 :]) and sum(log) == shard.numel()


def test_vocabulary_rows_past_the_checkpoint_are_zero_padding(tmp_path, monkeypatch, tp2):
    embed = torch.randn(7, HIDDEN)
    safetensors_torch.save_file({"model.embed_tokens.weight": embed}, tmp_path / "model.safetensors")
    monkeypatch.setattr(checkpoint, "CHECKPOINT", {"embed.weight": ("model.embed_tokens.weight",)})
    monkeypatch.setattr(sharding, "PADDED", True)
    monkeypatch.setattr(sharding, "PADDED_VOCAB", 8)
    found = checkpoint.Checkpoint(tmp_path)
    vocabulary = "rows of the vocabulary"
    shards = [checkpoint.read_parameter(found, "embed.weight", vocabulary, torch.Size([4, HIDDEN]), rank) for rank in range(2)]
    assert torch.equal(torch.cat(shards), torch.cat([embed, torch.zeros(1, HIDDEN)]))
    assert torch.equal(checkpoint.checkpoint_tensors("embed.weight", torch.cat(shards), found)["model.embed_tokens.weight"], embed)
    too_short = torch.Size([3, HIDDEN])  # 6 rows: not the padding of a vocabulary of 7
    with pytest.raises(checkpoint.CheckpointError, match=r"model.embed_tokens.weight \(\(7, 8\)\) do not make this model's \(6, 8\)"):
        checkpoint.read_parameter(found, "embed.weight", vocabulary, too_short, 0)


EXPERT_W1 = "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight"


@pytest.mark.parametrize(("split", "dim"), [("experts, rows", 0), ("experts, columns", 1)])
def test_each_rank_reads_only_its_experts_and_its_part_of_each(tmp_path, monkeypatch, tp2, split, dim):
    """4 experts over ep 2 (replica 1 holds experts 2 and 3), each split over tp 2; saving takes
    every expert back to its own tensor."""
    for module in (checkpoint, sharding):
        monkeypatch.setattr(module, "MOE", True)
        monkeypatch.setattr(module, "EP", 2)
    monkeypatch.setattr(checkpoint, "EXPERTS", 4)
    experts = [torch.randn(6, HIDDEN) for _ in range(4)]
    safetensors_torch.save_file({EXPERT_W1.format(i=1, e=e): w for e, w in enumerate(experts)}, tmp_path / "model.safetensors")
    monkeypatch.setattr(checkpoint, "CHECKPOINT", {"layers.{i}.moe_gate.weight": (EXPERT_W1,)})
    local = torch.Size([2, 3, HIDDEN] if dim == 0 else [2, 6, HIDDEN // 2])
    found, log = opened(tmp_path, monkeypatch)
    assert found.written() == {EXPERT_W1.format(i=i, e=e) for i in range(2) for e in range(4)}  # both layers
    shard = checkpoint.read_experts(found, "layers.1.moe_gate.weight", split, local, Place(dp_rank=3, tp_rank=1))
    expected = torch.stack([w.chunk(2, dim=dim)[1] for w in experts[2:]])  # dp 3: place 1 of its group
    assert torch.equal(shard, expected) and sum(log) == shard.numel()
    saved = checkpoint.expert_tensors("layers.1.moe_gate.weight", torch.stack(experts), found)
    assert list(saved) == [EXPERT_W1.format(i=1, e=e) for e in range(4)]
    assert all(torch.equal(saved[name], w) for name, w in zip(saved, experts, strict=True))
    wrong = torch.Size([2, 4, HIDDEN] if dim == 0 else [2, 6, HIDDEN])
    message = r"block_sparse_moe.experts.0.w1.weight \(6, 8\) is not an expert's \(\d+, \d+\) of this model"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.read_experts(found, "layers.1.moe_gate.weight", split, wrong, Place(dp_rank=0, tp_rank=0))


def _checkpoint_of_the_runtime_model(folder, dtype, files=1):
    """model.py's small instance (two layers of a norm and a linear) as a checkpoint, in `files` files."""
    tensors = {}
    for layer in range(2):
        tensors[f"model.layers.{layer}.norm.weight"] = torch.randn(16).to(dtype)
        tensors[f"model.layers.{layer}.norm.bias"] = torch.randn(16).to(dtype)
        tensors[f"model.layers.{layer}.fc.weight"] = torch.randn(16, 16).to(dtype)
    names = sorted(tensors)
    if files == 1:
        safetensors_torch.save_file(tensors, folder / "model.safetensors")
        return tensors
    weight_map = {}
    for number, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        file = f"model-{number:05d}-of-00002.safetensors"
        safetensors_torch.save_file({name: tensors[name] for name in part}, folder / file)
        weight_map |= dict.fromkeys(part, file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "test"}')
    return tensors


@pytest.fixture
def one_process():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield Groups(0, None)
    dist.destroy_process_group()


@pytest.mark.parametrize(("dtype", "files"), [(torch.float32, 1), (torch.bfloat16, 2)])
def test_load_then_save_gives_back_the_same_bytes_names_and_files(tmp_path, one_process, dtype, files):
    source, out = tmp_path / "source", tmp_path / "saved"
    source.mkdir()
    tensors = _checkpoint_of_the_runtime_model(source, dtype, files)
    stage = model.Stage(one_process)
    loaded = checkpoint.load_checkpoint(str(source), stage, one_process)
    assert torch.equal(stage.layers["1"].fc.weight, tensors["model.layers.1.fc.weight"].float())
    checkpoint.save_checkpoint(str(out), dict(stage.named_parameters()), one_process, loaded)
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in source.iterdir())
    for path in source.glob("*.safetensors"):
        saved = safetensors_torch.load_file(out / path.name)
        original = safetensors_torch.load_file(path)
        assert saved.keys() == original.keys()
        for name, tensor in original.items():  # byte for byte: the same dtype and bits
            assert saved[name].dtype == tensor.dtype and saved[name].view(torch.uint8).equal(tensor.view(torch.uint8))
    if files > 1:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path, one_process):
    tensors = _checkpoint_of_the_runtime_model(tmp_path, torch.float32)
    tensors.pop("model.layers.1.fc.weight")
    tensors["model.layers.0.fc.bias"] = torch.zeros(16)
    tensors["model.layers.0.attn.masked_bias"] = torch.zeros(1)  # a buffer of old GPT-2 checkpoints: skipped
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError) as raised:
        checkpoint.load_checkpoint(str(tmp_path), model.Stage(one_process), one_process)
    assert "1 tensors this model needs are missing (model.layers.1.fc.weight" in str(raised.value)
    assert "1 tensors this model has no parameter for (model.layers.0.fc.bias" in str(raised.value)
    with pytest.raises(checkpoint.CheckpointError, match="no model.safetensors.index.json"):
        checkpoint.Checkpoint(tmp_path / "nowhere")


def test_save_without_training_to_save_is_a_usage_error(capsys):
    from par.codegen.pytorch.runtime import cli

    with pytest.raises(SystemExit) as raised:
        cli.parse_args(["--check", "--save", "out"])
    assert raised.value.code == 2 and "--save writes the weights after training" in capsys.readouterr().err
    assert cli.parse_args(["--save", "out"]).steps == 10  # training by default: then saved


def _load_on_rank(rank: int, folders: list[str], store: str, results: str) -> None:
    """One rank of a gloo group of len(folders): loads its own folder, writes what became of it."""
    import os

    outcome = "loaded"
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store, len(folders)), rank=rank, world_size=len(folders))
        checkpoint.load_checkpoint(folders[rank], model.Stage(Groups(rank, None)), Groups(rank, None))
    except checkpoint.CheckpointError as error:
        outcome = f"CheckpointError: {error}"
    except BaseException as error:  # noqa: BLE001 - recorded for the test's message
        outcome = f"{type(error).__name__}: {error}"
    with open(f"{results}/rank{rank}", "w") as file:
        file.write(outcome)
    os._exit(0)


def test_a_folder_one_rank_cannot_read_fails_every_rank_instead_of_hanging(tmp_path):
    """Rank 1's index names a file that cannot be opened (a folder: OSError, not CheckpointError).

    Both ranks must reach the verdict AllReduce and raise CheckpointError; before, rank 1 left
    while rank 0 waited in the AllReduce (on NCCL, until its timeout)."""
    import multiprocessing

    good, bad, results = tmp_path / "good", tmp_path / "bad", tmp_path / "results"
    for folder in (good, bad, results):
        folder.mkdir()
    tensors = _checkpoint_of_the_runtime_model(good, torch.float32)
    (bad / "model.safetensors").mkdir()  # listed by the index, unreadable as a file
    weight_map = dict.fromkeys(tensors, "model.safetensors")
    (bad / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    context = multiprocessing.get_context("fork")
    folders = [str(good), str(bad)]
    ranks = [context.Process(target=_load_on_rank, args=(rank, folders, str(tmp_path / "store"), str(results)),
                             daemon=True) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(60)
    hung = [rank for rank, process in enumerate(ranks) if process.exitcode is None]
    for process in ranks:
        if process.exitcode is None:
            process.kill()
    assert not hung, f"ranks {hung} still waiting after 60 s"
    outcomes = [(results / f"rank{rank}").read_text() for rank in range(2)]
    assert outcomes[0] == "CheckpointError: another rank could not read its shard of the checkpoint", outcomes
    assert outcomes[1].startswith(f"CheckpointError: {bad}: OSError"), outcomes
