"""What autograd keeps on CUDA against the cost model's activations (the rows of docs/cost.md as
torch's CUDA kernels keep them: no `on_cpu`), for one rank's shard of each stage, without and with
activation recomputation. One GPU; no process group (the collectives are the saved-tensor test's
stand-ins):

    python tests/gpu/cuda_saves.py [--out DIR] [--device cpu]

Prints one line per case and stage; exit 0 when every one is within 5 %, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The checkout last: its folder `par` is the application alone, not the installed package.
sys.path[:0] = [str(ROOT / "tests" / "torch")]
sys.path.append(str(ROOT))

LLAMA = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2"]
CASES = {
    f"{name} {dtype} recompute {mode}": (spec, [*defines, f"dtype={dtype}", f"recompute={mode}"])
    for name, spec, defines in (("megatron tp2", "megatron_tp8_pp2", ["tp=2", "layers=4", "batch=4"]), ("llama sp", "llama_gqa", LLAMA))
    for dtype in ("bf16", "fp32")
    for mode in ("none", "selective", "full")
}
TOLERANCE = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the model.py files (default: a temporary one)")
    parser.add_argument("--device", default="cuda", help="cpu: the same against what torch's CPU kernels keep")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_saves: no CUDA device")
        return 2
    from small_models import compile_small
    from test_saved_tensors import measured_stage

    from par.dsl.cost.accounting import saved_bytes

    folder = args.out or Path(tempfile.mkdtemp(prefix="par-cuda-saves-"))
    failed = 0
    for name, (spec, defines) in CASES.items():
        compiled = compile_small(spec, defines)
        mesh = compiled.deployment.mesh
        counted = saved_bytes(compiled.graph, on_cpu=args.device == "cpu")
        for stage in range(mesh.pp):
            measured = measured_stage(compiled, folder / name.replace(" ", "_") / f"stage{stage}", stage, device=args.device)
            expected = counted[stage * mesh.tp]
            ok = abs(measured - expected) <= TOLERANCE * measured
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}, stage {stage}: measured {measured} B, cost model {expected} B")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
