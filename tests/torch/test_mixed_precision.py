"""Mixed precision in model.py's runtime: fp32 master weights, fp32 gradient accumulation, fp16
loss scaling, the loss in fp32, and --check's tolerance derived from the dtype."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from par.codegen.pytorch.runtime import batches, modes, optimizer, step  # noqa: E402
from par.codegen.pytorch.runtime.model import Stage  # noqa: E402


def _stage(dtype: torch.dtype) -> Stage:
    """The runtime's own small stage (two residual layers), its parameters in `dtype`."""
    return Stage(SimpleNamespace(stage=0)).to(dtype)


@pytest.fixture
def mixed(monkeypatch):
    """The runtime as model.py holds it for fp16 parameters with fp32 gradients, on one process."""

    def configure(dtype: torch.dtype, grad_dtype: torch.dtype = torch.float32) -> None:
        low = dtype != torch.float32
        for module in (step, optimizer):
            monkeypatch.setattr(module, "MIXED_PRECISION", low)
        monkeypatch.setattr(step, "FP32_GRADIENTS", low and grad_dtype == torch.float32)
        monkeypatch.setattr(step, "GRAD_DTYPE", grad_dtype)
        monkeypatch.setattr(optimizer, "LOSS_SCALING", dtype == torch.float16)

    return configure


def test_gradients_accumulate_over_microbatches_in_fp32_beside_fp16_parameters(mixed):
    mixed(torch.float16)
    stage = _stage(torch.float16)
    buffer = step.GradientBuffer(stage)
    weight = stage.layers["0"].fc.weight
    # 2048 + 1 is not an fp16 number (its spacing there is 2): accumulated in fp16 it stays 2048.
    for value in (2048.0, 1.0):
        (weight * value).sum().backward()
    assert weight.grad is None  # each microbatch's fp16 gradient is freed once added
    assert buffer.flat.dtype == torch.float32
    assert torch.all(buffer.main_views["layers.0.fc.weight"] == 2049.0)
    buffer.zero()
    assert torch.all(buffer.main == 0)


def test_gradients_reduced_in_the_model_dtype_are_copied_to_fp32_for_adamw(mixed):
    mixed(torch.bfloat16, grad_dtype=torch.bfloat16)
    stage = _stage(torch.bfloat16)
    buffer = step.GradientBuffer(stage)
    weight = stage.layers["1"].fc.weight
    (weight * 3.0).sum().backward()
    assert weight.grad is not None  # a view of the flat bf16 buffer, accumulated in place
    assert weight.grad.untyped_storage().data_ptr() == buffer.flat.untyped_storage().data_ptr()
    buffer.reduce(SimpleNamespace())  # one process: no collective, only the copy to fp32
    assert buffer.main.dtype == torch.float32 and buffer.main.data_ptr() != buffer.flat.data_ptr()
    assert torch.all(buffer.main_views["layers.1.fc.weight"] == 3.0)


def test_master_weights_move_bf16_norm_weights_that_plain_adamw_leaves_at_one(mixed):
    """1 - 1e-3 rounds to 1 in bf16 (spacing 2**-7 below 1): AdamW on the bf16 weight never moves
    it; on an fp32 master, a few steps of 1e-3 add up to a bf16 step."""
    mixed(torch.bfloat16)
    stage = _stage(torch.bfloat16)
    with torch.no_grad():
        for param in stage.parameters():
            param.fill_(1.0)
    buffer = step.GradientBuffer(stage)
    adamw = optimizer.Optimizer(stage, buffer, lr=1e-3)
    norm = stage.layers["0"].ln.weight
    plain = norm.detach().clone().requires_grad_()
    plain_adamw = torch.optim.AdamW([plain], lr=1e-3)
    for _ in range(10):
        buffer.zero()
        buffer.main_views["layers.0.ln.weight"].fill_(1.0)  # a positive gradient: AdamW steps by -lr
        adamw.step()
        plain.grad = torch.ones_like(plain)
        plain_adamw.step()
    assert torch.all(plain == 1.0)
    assert torch.all(norm < 1.0) and norm.dtype == torch.bfloat16
    assert torch.allclose(
        adamw.weights["layers.0.ln.weight"], torch.full_like(norm, 1 - 10e-3, dtype=torch.float32), atol=5e-4
    )


def test_fp16_steps_with_inf_or_nan_gradients_are_skipped_and_the_scale_backs_off(mixed, monkeypatch):
    mixed(torch.float16)
    monkeypatch.setattr(optimizer, "WORLD_SIZE", 1)
    stage = _stage(torch.float16)
    buffer = step.GradientBuffer(stage)
    adamw = optimizer.Optimizer(stage, buffer, lr=1e-2)
    scaler = adamw.scaler
    before = {name: param.detach().clone() for name, param in stage.named_parameters()}
    for bad in (math.inf, math.nan):
        buffer.zero()
        buffer.main[0] = bad
        adamw.step()
        assert not scaler.finite
        assert all(torch.equal(before[name], param) for name, param in stage.named_parameters())
    assert scaler.skipped == 2 and scaler.scale == optimizer.LossScaler.INITIAL / 4
    buffer.zero()
    buffer.main.fill_(scaler.scale)  # scaled gradients of 1: the step divides by the scale
    adamw.step()
    assert scaler.finite and scaler.skipped == 2
    assert all(not torch.equal(before[name], param) for name, param in stage.named_parameters())
    assert torch.all(buffer.main == 1.0)


def test_the_loss_scale_grows_after_an_interval_of_finite_steps(monkeypatch):
    monkeypatch.setattr(optimizer.LossScaler, "GROWTH_INTERVAL", 3)
    scaler = optimizer.LossScaler()
    for _ in range(5):
        scaler.update(True)
    assert scaler.scale == optimizer.LossScaler.INITIAL * 2
    scaler.update(False)
    scaler.update(True)
    scaler.update(True)
    assert scaler.scale == optimizer.LossScaler.INITIAL and scaler.skipped == 1  # interval restarted


def test_the_loss_is_summed_in_fp32_where_fp16_overflows():
    output = torch.full((2, 512, 64), 3.0, dtype=torch.float16)
    target = torch.zeros_like(output)
    assert torch.isinf((output - target).square().sum())  # 589824 > fp16's largest, 65504
    loss = batches.microbatch_loss(None, output, target)  # without a vocabulary the stage is not read
    assert loss.dtype == torch.float32
    expected = 9.0 * output.numel() / (batches.BATCH // batches.DP * batches.SEQ * batches.HIDDEN)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize(("dtype", "eps"), [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
def test_the_check_tolerance_grows_with_eps_and_the_square_root_of_the_rounding_depth(monkeypatch, dtype, eps):
    monkeypatch.setattr(modes, "DTYPE", dtype)
    for name, value in {"LAYERS": 2, "BATCH": 8, "DP": 2, "MICROBATCHES": 2, "SEQ": 8}.items():
        monkeypatch.setattr(modes, name, value)
    tolerance, why = modes.derived_tolerance()
    assert tolerance == pytest.approx(2 * eps * math.sqrt(2 * 16))
    monkeypatch.setattr(modes, "SEQ", 8 * 4)
    assert modes.derived_tolerance()[0] == pytest.approx(2 * tolerance)
    assert re.fullmatch(r"2 eps sqrt\(layers x tokens\) = 2 x [0-9.e-]+ x sqrt\(2 x 16\), at least 1e-5", why)
    monkeypatch.setattr(modes, "DTYPE", torch.float32)
    assert modes.derived_tolerance()[0] == 1e-5


# -- model.py on two processes ------------------------------------------------------------------

STEP = re.compile(r"^step (\d+)/(\d+): loss (\S+), ", re.M)
# megatron_tp8_pp2 (fp16) at a size where 100 steps take seconds: two data-parallel replicas, so
# gradients are reduced over processes (in fp32, or in the model's dtype with grad_dtype model).
TINY = ["heads=4", "tp=1", "pp=1", "dp=2", "layers=2", "batch=8", "microbatches=2"]


def _losses(workdir, dtype: str, *defines: str) -> tuple[list[float], str]:
    from fork_launch import launch
    from small_models import compile_small, write_model

    compiled = compile_small("megatron_tp8_pp2", [*TINY, f"dtype={dtype}", *defines])
    folder = workdir / "-".join([dtype, *defines])
    results = launch(write_model(compiled, folder), 2, ["--steps", "100"], folder / "logs", timeout=300)
    assert [r.exitcode for r in results] == [0, 0], [r.stderr for r in results]
    found = STEP.findall(results[0].stdout)
    assert [int(number) for number, _, _ in found] == list(range(1, 101))
    return [float(loss) for _, _, loss in found], results[0].stdout


@pytest.mark.slow
def test_100_fp16_and_bf16_steps_stay_finite_and_their_loss_falls_as_fp32s(workdir):
    """The first loss differs from fp32's only by the forward's rounding to the dtype: a few
    roundings of eps / 2 per layer, so 10 eps bounds it (2 layers). After that every step's
    update differs by about eps relative (weights and activations rounded to the dtype), and
    such differences add up at most linearly: the last loss is within `steps` eps of fp32's.
    AdamW on the fp16 weights themselves gave NaN from the second step."""
    reference, _ = _losses(workdir, "fp32")
    assert reference[-1] < reference[0] / 100  # one fixed batch: the model memorises it
    for dtype, defines, eps in (
        ("fp16", (), 2.0**-10),
        ("bf16", (), 2.0**-7),
        ("bf16", ("grad_dtype=model",), 2.0**-7),
    ):
        losses, printed = _losses(workdir, dtype, *defines)
        assert all(math.isfinite(loss) for loss in losses), (dtype, defines)
        assert losses[0] == pytest.approx(reference[0], rel=10 * eps), (dtype, defines)
        assert losses[-1] == pytest.approx(reference[-1], rel=100 * eps), (dtype, defines)
        print(f"{dtype} {' '.join(defines)}: first loss {losses[0]} (fp32 {reference[0]}), ", end="")
        print(f"last {losses[-1]} (fp32 {reference[-1]})")
        if dtype == "fp16":
            assert re.search(r"^skipped \d+ of 100 steps \(inf or NaN gradients\), loss scale \d+$", printed, re.M)


@pytest.mark.slow
def test_fp16_check_at_seq_512_passes_and_prints_its_tolerance(workdir):
    """Before mixed precision the unscaled fp16 gradients underflowed here (error 0.081)."""
    from fork_launch import launch
    from small_models import compile_small, write_model

    defines = ["heads=4", "tp=2", "pp=1", "dp=1", "layers=2", "batch=4", "microbatches=2", "dtype=fp16", "seq=512"]
    path = write_model(compile_small("megatron_tp8_pp2", defines), workdir)
    results = launch(path, 2, ["--check"], workdir / "logs", timeout=300)
    assert [r.exitcode for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    tolerance = 2 * 2.0**-10 * math.sqrt(2 * 1024)  # 2 eps sqrt(layers x tokens of a microbatch)
    verdict = re.search(r"^check: OK: \d+ tensors, world size 2, tolerance (\S+) \((.*)\)$", results[0].stdout, re.M)
    assert verdict, results[0].stdout
    assert float(verdict[1]) == pytest.approx(tolerance, rel=1e-2)
    assert verdict[2].startswith("2 eps sqrt(layers x tokens)")
    gradient = re.search(r"largest gradient error (\S+)", results[0].stdout)
    assert gradient and float(gradient[1]) < 0.081


@pytest.mark.parametrize(
    ("dtype", "grad_dtype", "written", "hooks", "scaling"),
    [
        ("fp32", "fp32", "torch.float32", False, False),
        ("bf16", "fp32", "torch.float32", True, False),
        ("bf16", "model", "torch.bfloat16", False, False),
        ("fp16", "fp32", "torch.float32", True, True),
        ("fp16", "model", "torch.float16", False, True),
    ],
)
def test_model_py_holds_the_precision_its_spec_asks_for(dtype, grad_dtype, written, hooks, scaling):
    from small_models import compile_small

    from par.codegen.pytorch.emit import emit_model

    text = emit_model(compile_small("megatron_tp8_pp2", ["tp=2", "pp=1", f"dtype={dtype}", f"grad_dtype={grad_dtype}"]))
    assert f"\nGRAD_DTYPE = {written}  #" in text
    assert ("register_post_accumulate_grad_hook" in text) == hooks  # fp32 accumulation beside fp16/bf16
    assert ("class LossScaler" in text) == scaling
    assert ("param.detach().float()" in text) == (dtype != "fp32")  # master weights
