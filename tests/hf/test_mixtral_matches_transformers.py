"""Mixtral end to end, held to transformers' own MixtralForCausalLM (an oracle that shares no code
with par): a tiny random model saved with `save_pretrained` (its experts as the published
checkpoints hold them, `block_sparse_moe.experts.{e}.w1/w2/w3`), `par new --from-hf` for the
layout, model.py's --load giving each rank its experts and its rows of them, one training step,
and --save's code writing the gradients back in Hugging Face names: the logits, the loss and the
gradient of every checkpoint tensor within 1e-5 (fp32) of transformers' at ep 1, 2 and 4, tp 1
and 2, pp 1 and 2.

transformers' causal LM adds the load-balancing loss only with output_router_logits, pooling the
routing of all its layers into one loss (par adds each layer's own): the auxiliary loss is held
to transformers' on a one-layer model, where the two are the same loss. Each microbatch of each
replica is one forward of transformers' model, as gradient accumulation and data parallelism
run it; a mutated model.py (experts loaded onto the wrong ranks, the combine dropped) fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("transformers")
from fork_launch import launch, load_module  # noqa: E402
from hf_models import mixtral_checkpoint_names, mixtral_model, relative  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

from par.cli import main  # noqa: E402

PROBE = Path(__file__).resolve().parent / "probe.py"
TOLERANCE = 1e-5
AUX_LOSS_COEF = 0.5  # large, so that a wrong auxiliary gradient shows


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """layers -> (transformers' Mixtral, the folder save_pretrained wrote): two layers without the
    auxiliary loss, one layer with it."""
    made = {}

    def get(layers: int):
        if layers not in made:
            folder = tmp_path_factory.mktemp(f"mixtral{layers}")
            model = mixtral_model(layers, AUX_LOSS_COEF if layers == 1 else None)
            model.save_pretrained(folder)
            made[layers] = (model, folder)
        return made[layers]

    return get


def build(workdir, checkpoint, layout, capsys) -> Path:
    """model.py for the layout (tp, pp, dp, ep, microbatches), from `par new --from-hf`."""
    tp, pp, dp, ep, microbatches = layout
    options = ["--tp", tp, "--pp", pp, "--dp", dp, "--ep", ep, "--microbatches", microbatches, "--seq", 8]
    code = main(["new", "--from-hf", str(checkpoint), "--batch", str(2 * dp * microbatches), *map(str, options)])
    spec = capsys.readouterr().out
    assert code == 0, spec
    return write_model(compile_source(spec), workdir / "build")


def run(workdir, model_py, checkpoint, layout):
    """model.py run by every rank through the probe; the generated module (for its batches) and
    the folder of what the ranks wrote."""
    tp, pp, dp, _, _ = layout
    out = workdir / "out"
    out.mkdir()
    results = launch(PROBE, tp * pp * dp, [str(model_py), str(checkpoint), str(out)], workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr[-2000:] for result in results]
    return load_module(model_py, "generated_mixtral"), out


def errors(model, checkpoint, generated, out, layout) -> dict[str, float]:
    """How far par's logits, loss, auxiliary loss and gradients are from transformers'."""
    tp, pp, dp, ep, microbatches = layout
    model.zero_grad()
    expected_logits, cross_entropy, aux = [], [], []
    for d in range(dp):
        for m in range(microbatches):
            ids = generated.make_microbatch("inputs", d, m, 0)
            result = model(ids, labels=ids)  # transformers shifts the labels: token t predicts token t + 1
            (result.loss / (dp * microbatches)).backward()  # the step's loss: the mean over microbatches
            expected_logits.append(result.logits.detach())
            # with output_router_logits, transformers' loss holds router_aux_loss_coef x aux_loss
            aux.append(AUX_LOSS_COEF * result.aux_loss.detach() if result.aux_loss is not None else torch.zeros(()))
            cross_entropy.append(result.loss.detach() - aux[-1])
    logits, losses = [], []
    for d in range(dp):
        found = [torch.load(out / f"outputs{(d * pp + pp - 1) * tp + t}.pt") for t in range(tp)]
        for parts in zip(*(part["outputs"] for part in found), strict=True):  # microbatches, in order
            logits.append(torch.cat(parts, dim=-1)[..., : generated.VOCAB])  # the vocabulary's shards
        losses.append(torch.stack(found[0]["losses"]).sum())  # the replica's mean
    found = {
        "logits": relative(torch.cat(logits), torch.cat(expected_logits)),
        "loss": relative(torch.stack(losses).mean(), torch.stack(cross_entropy).mean()),
    }
    recorded = [torch.stack(torch.load(path)).sum() for path in out.glob("aux*.pt")]
    if recorded or model.config.output_router_logits:  # each rank's share of the step's auxiliary loss
        found["auxiliary loss"] = relative(torch.stack(recorded).sum() / dp, torch.stack(aux).mean())
    saved = safetensors_torch.load_file(out / "gradients" / "model.safetensors")
    names = set(safetensors_torch.load_file(checkpoint / "model.safetensors"))
    grads = mixtral_checkpoint_names({name: p.grad for name, p in model.named_parameters()})
    assert saved.keys() == grads.keys() == names
    return found | {f"gradient of {name}": relative(saved[name], grad) for name, grad in grads.items()}


def test_save_pretrained_writes_the_experts_as_the_test_names_them(checkpoints):
    """The names the test gives transformers' fused experts are those of the checkpoint it saves."""
    model, checkpoint = checkpoints(2)
    saved = safetensors_torch.load_file(checkpoint / "model.safetensors")
    named = mixtral_checkpoint_names(dict(model.named_parameters()))
    assert saved.keys() == named.keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in named.items())


# (tp, pp, dp, ep, microbatches). Together: ep 1, 2, 4; tp 1, 2; pp 1, 2; the auxiliary loss at
# tp 2 over microbatches and replicas. (Expert gradients reduced over the ranks holding the same
# experts, dp above ep, are held to Reference in tests/torch/test_experts_runtime.py.)
LAYOUTS = [
    pytest.param(2, (1, 1, 2, 2, 1), id="ep2"),
    pytest.param(2, (1, 1, 4, 4, 1), id="ep4", marks=pytest.mark.slow),
    pytest.param(2, (2, 2, 2, 2, 2), id="tp2-pp2-ep2", marks=pytest.mark.slow),
    pytest.param(1, (2, 1, 2, 1, 2), id="aux-loss-tp2-dp2-ep1", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("layers", "layout"), LAYOUTS)
def test_logits_loss_and_gradients_equal_transformers(workdir, checkpoints, capsys, layers, layout):
    model, checkpoint = checkpoints(layers)
    generated, out = run(workdir, build(workdir, checkpoint, layout, capsys), checkpoint, layout)
    found = errors(model, checkpoint, generated, out, layout)
    assert ("auxiliary loss" in found) == (layers == 1)
    worst = max(found, key=found.get)
    assert found[worst] <= TOLERANCE, (worst, found[worst])


MUTATIONS = {
    # --load gives each rank the experts of another member of its expert-parallel group
    "experts loaded onto the wrong ranks": (
        "ep_rank = dp_rank % EP  # its place in its expert-parallel group",
        "ep_rank = (dp_rank + 1) % EP",
    ),
    # the experts' results stay where they were computed
    "combine dropped": (
        "combine_moe_down = combine(moe_down, moe_router, self.ep_group)",
        "combine_moe_down = moe_down",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MUTATIONS)
def test_a_mutated_model_py_fails(workdir, checkpoints, capsys, name):
    model, checkpoint = checkpoints(2)
    layout = (1, 1, 2, 2, 1)
    model_py = build(workdir, checkpoint, layout, capsys)
    old, new = MUTATIONS[name]
    text = model_py.read_text()
    assert old in text, old
    model_py.write_text(text.replace(old, new))
    with pytest.raises(AssertionError):
        generated, out = run(workdir, model_py, checkpoint, layout)
        found = errors(model, checkpoint, generated, out, layout)
        assert max(found.values()) <= TOLERANCE
