"""The GPU check: tiny fp16 and bf16 builds of every shipped spec, run with nccl.

On a machine with CUDA GPUs, builds each spec of specs/ small (with -D overrides that fit the
GPU count: tp 2 on 2 or 3 GPUs, tp 2 and pp 2 on 4 or more; on one GPU tp 1 and pp 1, which runs
every op in both precisions on CUDA but no collective between ranks), runs `model.py --check`,
`model.py --steps 20` and, for a model with a vocabulary, `model.py --check --generate` under
torchrun with a timeout, and prints one summary line per run:

    python tests/gpu/gpu_check.py [--gpus N] [--jobs J] [--timeout S] [--out DIR] [--build-only]

`--jobs J` runs J builds at once when each fits the GPUs beside the others (one GPU: J ranks
share it; tiny models need a few hundred MB each).

Exit 0 when every run passed, 1 when one failed, 2 when the machine cannot run the check.
`--build-only` builds and checks that each world fits the GPUs, with no GPU at all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
DTYPES = ("fp16", "bf16")
MODES = (("--check",), ("--steps", "20"))
GENERATE = ("--check", "--generate", "5 7 11 13", "--max-new", "6")  # models with a vocabulary
# Production sizes shrunk to seconds per run; 4 microbatches exercise both pipeline schedules.
TINY = ["hidden=64", "heads=4", "ffn=256", "seq=16", "batch=8", "microbatches=4", "dp=1"]


@dataclass(frozen=True)
class Build:
    spec: str
    dtype: str
    defines: tuple[str, ...]
    world: int


def mesh_for(gpus: int) -> tuple[int, int]:
    """(tp, pp) of the tiny builds on `gpus` GPUs."""
    if gpus < 1:
        raise ValueError(f"the GPU check needs at least 1 GPU, got {gpus}")
    return (2, 2) if gpus >= 4 else (2, 1) if gpus >= 2 else (1, 1)


def checked(path: Path) -> bool:
    """Whether `par build` writes a model.py for the spec that `--check` can hold to Reference in
    fp16 and bf16. Not a mixture of experts: its router in low precision may choose other experts
    than Reference's fp32 router for tokens whose scores are within rounding of each other."""
    from par.codegen.artifacts import not_generated
    from par.dsl.checks.check import check
    from par.dsl.frontend.parser import parse_text

    deployment, _ = check(parse_text(path.read_text(encoding="utf-8"), path.name))
    return not not_generated(deployment) and deployment.model.moe is None


def builds(gpus: int) -> list[Build]:
    """Every shipped spec in every dtype, with the overrides that make it tiny and fit `gpus`."""
    tp, pp = mesh_for(gpus)
    layers = 2 * pp
    mesh = [f"tp={tp}", f"pp={pp}", f"layers={layers}"]
    per_spec = {
        "llama_gqa": ["kv_heads=2"],  # 8 KV heads would not divide 4 query heads
        "llama3_70b_serve": ["kv_heads=2"],
    }
    found = []
    for path in sorted(SPECS.glob("*.par")):
        if not checked(path):
            continue
        text = path.read_text(encoding="utf-8")
        serving = ["prompt=8", "generate=4"] if "serve" in text else []  # within seq 16
        listed = re.search(r"^[^#\n]*\bstages\s*\[", text, re.M)  # a spec that lists its stages (not a comment's word)
        stages = [f"stages={','.join(['2'] * pp)}"] if listed else []
        for dtype in DTYPES:
            defines = (*TINY, *mesh, *per_spec.get(path.stem, []), *stages, *serving, f"dtype={dtype}")
            found.append(Build(path.stem, dtype, defines, tp * pp))
    return found


def build(spec: Build, out: Path) -> Path:
    """`par build` of one spec; returns its model.py (raises with par's message on failure)."""
    folder = out / f"{spec.spec}-{spec.dtype}"
    command = [sys.executable, "-m", "par", "build", str(SPECS / f"{spec.spec}.par"), "-o", str(folder)]
    for define in spec.defines:
        command += ["-D", define]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"par build {spec.spec} ({spec.dtype}) failed:\n{done.stderr}")
    model = folder / spec.spec / "model.py"
    if world_size(model.read_text()) != spec.world:
        raise RuntimeError(f"{model}: expected {spec.world} processes, it runs on {world_size(model.read_text())}")
    return model


def world_size(source: str) -> int:
    """The processes a model.py runs on: TP * PP * DP, read from its constants."""
    sizes = dict(re.findall(r"^(TP|PP|DP) = (\d+)", source, re.MULTILINE))
    return int(sizes["TP"]) * int(sizes["PP"]) * int(sizes["DP"])


def execute(model: Path, world: int, mode: tuple[str, ...], timeout: float) -> tuple[int | None, float, str]:
    """torchrun of model.py on `world` GPUs: (exit code, None on timeout; seconds; last output line)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    command += [str(model), *mode, "--timeout", str(int(timeout))]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        stop(process)
        output, _ = process.communicate()
        code = None
    lines = [line for line in output.splitlines() if line.strip()]
    return code, time.perf_counter() - start, lines[-1] if lines else ""


def stop(process: subprocess.Popen) -> None:
    """Ends torchrun and the ranks it started. Its elastic agent starts each rank in a session of
    its own, out of torchrun's process group: SIGTERM lets torchrun stop them, and whatever of
    them still runs after a grace period is killed by pid."""
    ranks = _children(process.pid)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux: read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def summary(spec: Build, mode: tuple[str, ...], code: int | None, seconds: float, last: str) -> str:
    verdict = "OK" if code == 0 else "TIMEOUT" if code is None else f"FAIL (exit {code})"
    return f"gpu-check {spec.spec} {spec.dtype} {' '.join(mode)}: {verdict}, {seconds:.1f} s: {last}"


def cuda_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def modes(model: Path) -> tuple[tuple[str, ...], ...]:
    """The runs of one build: --check and --steps; generation too where the model has a vocabulary."""
    has_vocabulary = re.search(r"^VOCAB = \d+", model.read_text(), re.MULTILINE) is not None
    return (*MODES, GENERATE) if has_vocabulary else MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: every CUDA GPU)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J", help="runs at once (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="limit of each run (default 300 s)")
    parser.add_argument("--out", type=Path, help="where the builds go (default: a temporary folder)")
    parser.add_argument("--build-only", action="store_true", help="build every spec for --gpus GPUs, run nothing")
    args = parser.parse_args(argv)
    gpus = args.gpus if args.gpus is not None else cuda_gpus()
    if gpus < 1:
        print(f"gpu-check: needs at least 1 CUDA GPU, found {gpus}", file=sys.stderr)
        return 2
    if not args.build_only and cuda_gpus() < gpus:
        print(f"gpu-check: --gpus {gpus}, but this machine has {cuda_gpus()} CUDA GPUs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="par-gpu-") as scratch:
        out = args.out or Path(scratch)
        failed = 0
        runs: list[tuple[Build, Path, tuple[str, ...]]] = []
        for spec in builds(gpus):
            try:
                model = build(spec, out)
            except RuntimeError as error:
                print(f"gpu-check {spec.spec} {spec.dtype} build: FAIL: {error}", flush=True)
                failed += 1
                continue
            if args.build_only:
                print(f"gpu-check {spec.spec} {spec.dtype} build: OK, {spec.world} processes", flush=True)
                continue
            runs += [(spec, model, mode) for mode in modes(model)]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = pool.map(lambda run: execute(run[1], run[0].world, run[2], args.timeout), runs)
            for (spec, _, mode), (code, seconds, last) in zip(runs, done, strict=True):
                print(summary(spec, mode, code, seconds, last), flush=True)
                failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
