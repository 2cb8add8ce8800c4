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

from par.cli import main  # noqa: E402

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


@pytest.mark.slow
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


def _gpt2(folder: Path, form: str) -> dict[str, torch.Tensor]:
    """A random GPT-2 (tied, a vocabulary of 99: padded for tp 2) saved as sharded safetensors or a
    pickle, as older transformers wrote it; the tensors as saved."""
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=32)
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(config)
    if form == "sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
        assert (folder / "model.safetensors.index.json").is_file()
        saved = {}
        for path in folder.glob("*.safetensors"):
            saved |= safetensors_torch.load_file(path)
        return saved
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = model.state_dict()
    torch.save(state, folder / "pytorch_model.bin")
    return {name: tensor for name, tensor in state.items() if name != "lm_head.weight"}  # the tied copy


@pytest.mark.slow
@pytest.mark.parametrize("form", ["sharded", "pickle"])
def test_a_whole_gpt2_round_trips_and_transformers_loads_what_was_saved(workdir, form, capsys):
    source = workdir / "source"
    tensors = _gpt2(source, form)
    assert main(["new", "--from-hf", str(source), "--tp", "2", "--pp", "2", "--seq", "16", "--batch", "2"]) == 0
    model_py = write_model(compile_source(capsys.readouterr().out), workdir / "build")
    out = workdir / "saved"
    argv = ["--load", str(source), "--save", str(out), "--steps", "1", "--lr", "0"]
    results = launch(model_py, 4, argv, workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    if form == "sharded":
        saved = {}
        for path in out.glob("*.safetensors"):
            saved |= safetensors_torch.load_file(path)
    else:
        saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert saved.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert saved[name].dtype == tensor.dtype and saved[name].view(torch.uint8).equal(tensor.view(torch.uint8)), name
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 98]])
    original = transformers.GPT2LMHeadModel.from_pretrained(source).eval()
    assert torch.equal(reloaded(ids).logits, original(ids).logits)


LLAMA = """model small : llama { layers 2  hidden 32  heads 4  kv_heads 2  ffn 48  vocab 99  batch 4  seq 8  dtype fp32 }
mesh { tp %d  pp %d  microbatches 2 }
"""


@pytest.mark.slow
def test_save_without_load_writes_the_same_checkpoint_from_any_layout_and_transformers_loads_it(workdir):
    """Weights drawn from the seed, one step at learning rate 0, saved from tp 2 x pp 2 (vocabulary
    padded to 100) and from one process: the same bytes, under the names transformers reads."""
    saved = {}
    for tp, pp in ((2, 2), (1, 1)):
        model_py = write_model(compile_source(LLAMA % (tp, pp)), workdir / f"build{tp}{pp}")
        out = workdir / f"saved{tp}{pp}"
        results = launch(model_py, tp * pp, ["--save", str(out), "--steps", "1", "--lr", "0"], workdir / f"logs{tp}{pp}")
        assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
        assert [path.name for path in out.iterdir()] == ["model.safetensors"]
        saved[tp, pp] = safetensors_torch.load_file(out / "model.safetensors")
    assert saved[2, 2].keys() == saved[1, 1].keys()
    for name, tensor in saved[1, 1].items():
        assert saved[2, 2][name].view(torch.uint8).equal(tensor.view(torch.uint8)), name
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=48, vocab_size=99, rms_norm_eps=1e-5)
    config.save_pretrained(workdir / "saved11")
    _, info = transformers.LlamaForCausalLM.from_pretrained(workdir / "saved11", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
