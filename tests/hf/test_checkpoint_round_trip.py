"""model.py --load then --save on a layer stack split over tp 2 x pp 2 x dp 2: every rank reads its
shard of a Hugging Face checkpoint, rank 0 gathers them back, and the files come out bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")
from fork_launch import launch  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

# A llama layer stack (no vocabulary: no embedding or head) with grouped-query attention, whose
# fused QKV each tensor-parallel rank holds by head.
SPEC = """
model stack : llama { layers 2  hidden 32  heads 4  kv_heads 2  ffn 48  batch 4  seq 8  dtype fp32 }
mesh { tp 2  pp 2  dp 2  microbatches 2 }
"""


def layer_checkpoint(folder: Path, files: int) -> dict[str, torch.Tensor]:
    """The layers of a random LlamaForCausalLM of the spec's sizes, saved as transformers names them."""
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=48, vocab_size=16)
    torch.manual_seed(0)
    state = transformers.LlamaForCausalLM(config).state_dict()
    tensors = {name: tensor.contiguous() for name, tensor in state.items() if name.startswith("model.layers.")}
    folder.mkdir()
    if files == 1:
        safetensors_torch.save_file(tensors, folder / "model.safetensors")
        return tensors
    weight_map = {name: f"model-0000{1 + (name.startswith('model.layers.1.'))}-of-00002.safetensors" for name in tensors}
    for file in sorted(set(weight_map.values())):
        safetensors_torch.save_file({n: t for n, t in tensors.items() if weight_map[n] == file}, folder / file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


@pytest.mark.parametrize("files", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_load_then_save_is_lossless_across_tp_pp_and_dp(workdir, files):
    model_py = write_model(compile_source(SPEC), workdir / "build")
    source = workdir / "source"
    tensors = layer_checkpoint(source, files)
    out = workdir / "saved"
    # One step at learning rate 0: the weights pass through the optimizer unchanged.
    argv = ["--load", str(source), "--save", str(out), "--steps", "1", "--lr", "0"]
    results = launch(model_py, 8, argv, workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    saved = {}
    for path in sorted(out.glob("*.safetensors")):
        saved |= safetensors_torch.load_file(path)
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in source.iterdir())
    assert saved.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert saved[name].view(torch.uint8).equal(tensor.view(torch.uint8)), name


def test_a_checkpoint_of_other_sizes_fails_on_every_rank_with_its_name(workdir):
    model_py = write_model(compile_source(SPEC), workdir / "build")
    source = workdir / "source"
    tensors = layer_checkpoint(source, 1)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(40, 32)  # ffn 40, not 48
    safetensors_torch.save_file(tensors, source / "model.safetensors")
    results = launch(model_py, 8, ["--load", str(source), "--steps", "1"], workdir / "logs", timeout=240)
    assert all(result.exitcode == 1 for result in results)
    stage1 = results[2].stderr  # rank 2: stage 1, which holds layer 1
    assert "model.layers.1.mlp.up_proj.weight ((40, 32)) do not make this model's (48, 32)" in stage1
    assert "another rank could not read its shard of the checkpoint" in results[0].stderr
