"""One forward+backward step of a generated tp=2 model.py against PyTorch's own tensor parallelism.

Both sides run the same GPT layers, weights and batch on 2 processes (gloo, CPU, one thread
each), interleaved step by step in one run:

* generated: the `Stage` of the model.py that `par` writes for the Megatron spec at tp 2;
* parallelize_module: the same layers as an ordinary module, parallelized with
  `torch.distributed.tensor.parallel.parallelize_module` and ColwiseParallel / RowwiseParallel
  (QKV weight rows regrouped so that each rank's contiguous part holds whole heads).

It prints each side's median step time, the ratio generated / parallelize_module (below 1.0
means the generated code is faster), each side's peak memory per rank during a step and the
relative difference between the two outputs, and exits 1 when that exceeds the generated
file's --check tolerance: both must compute the same.

Peak memory is measured, not estimated: before each step the kernel's peak resident set of the
process (VmHWM) is reset to its current size (`/proc/self/clear_refs`, Linux), and after it
the peak's rise is read; the figure is the largest rise over the steps. Each rank makes glibc map
every block over 64 KiB on its own and unmap it when freed (`mallopt`), so the rise is the
step's peak of live activations, gradients and communication buffers (the weights are
resident before it), not what the allocator happened to keep from earlier steps.

    python bench/runtime.py [--steps N] [--hidden H] [--seq S]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "torch"))  # the launcher the distributed tests use

from fork_launch import free_port, load_module  # noqa: E402

from par.codegen.pytorch.emit import emit_model  # noqa: E402
from par.dsl.compiler import compile_file  # noqa: E402

TP = 2


def write_model(folder: Path, hidden: int, seq: int) -> Path:
    defines = [f"hidden={hidden}", f"heads={hidden // 32}", f"ffn={4 * hidden}", f"seq={seq}", "batch=4"]
    defines += ["layers=2", f"tp={TP}", "pp=1", "dp=1", "microbatches=1", "dtype=fp32"]
    path = folder / "model.py"
    path.write_text(emit_model(compile_file(ROOT / "specs" / "megatron_tp8_pp2.par", defines)))
    return path


def dtensor_model(module, reference, mesh):
    """Reference's layers, parallelized by torch.distributed.tensor.parallel."""
    import torch
    from torch import nn
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    class Layer(nn.Module):
        """A GPT layer whose attention reads however many heads its QKV shard holds."""

        def __init__(self, source):
            super().__init__()
            self.ln1, self.qkv, self.attn = source.ln1, source.qkv, source.attn
            self.ln2, self.fc1, self.mlp = source.ln2, source.fc1, source.mlp
            with torch.no_grad():  # contiguous row blocks must hold whole heads: [q_0 k_0 v_0 | q_1 k_1 v_1]
                self.qkv.weight.copy_(module.group_heads(self.qkv.weight, 0))

        def forward(self, x):
            qkv = self.qkv(self.ln1(x))
            local_heads = qkv.shape[-1] // (3 * module.HEAD_DIM)
            h = x + self.attn(module.causal_attention(qkv, heads=local_heads, kv_heads=local_heads))
            return h + self.mlp(torch.nn.functional.gelu(self.fc1(self.ln2(h)), approximate="tanh"))

    model = nn.Sequential(*(Layer(layer) for layer in reference.layers.values()))
    plan = {"qkv": ColwiseParallel(), "attn": RowwiseParallel(), "fc1": ColwiseParallel(), "mlp": RowwiseParallel()}
    for layer in model:
        parallelize_module(layer, mesh, plan)
    return model


def _status_kib(field: str) -> int:
    """A size from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _map_large_blocks() -> None:
    """glibc: map every block over 64 KiB on its own and return it when freed (a fixed threshold)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the figure is then an upper bound
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)


def timed_step(model, x, grad) -> tuple[float, int | None]:
    """(seconds, peak rise of the resident set in KiB, None where Linux cannot measure it) of one step."""
    for param in model.parameters():
        param.grad = None
    measured = Path("/proc/self/clear_refs").exists()
    if measured:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_kib("VmRSS")
    start = time.perf_counter()
    model(x).backward(grad)
    elapsed = time.perf_counter() - start
    return elapsed, _status_kib("VmHWM") - before if measured else None


def rank_main(rank: int, port: int, path: str, steps: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(TP), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    _map_large_blocks()
    module = load_module(Path(path))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    groups = module.Groups(dist.get_rank(), datetime.timedelta(seconds=120))
    device = torch.device("cpu")
    reference = module.Reference(seed=0)
    generated = module.build_stage(groups, device, reference.state_dict())
    parallel = dtensor_model(module, reference, init_device_mesh("cpu", (TP,)))

    inputs, _ = module.make_batch(0, seed=0)
    grad = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = module.relative_error(generated(inputs), parallel(inputs))
    times: dict[str, list[float]] = {"generated": [], "parallelize_module": []}
    peaks: dict[str, list[int | None]] = {"generated": [], "parallelize_module": []}
    for step in range(steps + 5):  # the first 5 warm up
        pair = (("generated", generated), ("parallelize_module", parallel))
        for name, model in pair if step % 2 else reversed(pair):
            elapsed, peak = timed_step(model, inputs, grad)
            if step >= 5:
                times[name].append(elapsed)
                peaks[name].append(peak)
    results.put((rank, times, peaks, difference, module.derived_tolerance()[0]))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_model(Path(folder), args.hidden, args.seq)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        port = free_port()
        processes = [
            context.Process(target=rank_main, args=(rank, port, str(path), args.steps, results)) for rank in range(TP)
        ]
        for process in processes:
            process.start()
        found = sorted((results.get(timeout=600) for _ in range(TP)), key=lambda result: result[0])
        for process in processes:
            process.join()
    _, times, _, difference, tolerance = found[0]
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"GPT, 2 layers, hidden {args.hidden}, seq {args.seq}, batch 4, fp32; tp {TP} on gloo (CPU), {args.steps} steps"
    )
    for name, median in medians.items():
        print(f"  {name:<20} median forward+backward {median * 1e3:8.2f} ms")
    print(f"  ratio generated / parallelize_module: {medians['generated'] / medians['parallelize_module']:.3f}")
    for rank, _, peaks, _, _ in found:
        shown = {name: None if None in values else max(values) / 1024 for name, values in peaks.items()}
        text = ", ".join(f"{name} {'n/a' if mib is None else f'{mib:.1f} MiB'}" for name, mib in shown.items())
        print(f"  rank {rank} peak memory of a step (resident set rise): {text}")
    print(f"  output difference: {difference:.2e} of the largest output (tolerance {tolerance:g})")
    if difference > tolerance:
        sys.exit("error: the generated model and parallelize_module compute different outputs")


if __name__ == "__main__":
    main()
