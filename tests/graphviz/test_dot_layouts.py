"""Every small layout draws: tp x pp x dp x sp, GPT and Llama blocks, both views, through real `dot`.

Graphviz's layout can fail on DOT that is valid (e.g. "trouble in init_rank" once every
tp >= 2 x dp >= 2 layout on one stage), so rendering a few specs is not enough: each mesh
shape gets its own drawing here.
"""

import itertools
import json

import pytest

from par.codegen.dot.emit import emit_compact_dot, emit_dot
from par.dsl.compiler import compile_text

BLOCKS = {"gpt": "heads 4", "llama": "heads 4  kv_heads 2"}


def layouts():
    for block, layers, tp, pp, dp in itertools.product(BLOCKS, (1, 2), (1, 2), (1, 2), (1, 2)):
        if pp > layers:
            continue
        for sp in (False, True) if tp > 1 else (False,):
            yield block, layers, tp, pp, dp, sp


CASES = list(layouts())


def spec_text(block: str, layers: int, tp: int, pp: int, dp: int, sp: bool) -> str:
    mesh = f"tp {tp}  pp {pp}  dp {dp}" + ("  microbatches 2" if pp > 1 else "") + ("  sp" if sp else "")
    return f"model m : {block} {{ layers {layers}  hidden 64  {BLOCKS[block]}  batch 4  seq 8  dtype fp32 }}\nmesh {{ {mesh} }}\n"


def gpu_lefts(svg_json: bytes) -> dict[int, float]:
    """The left edge of every GPU cluster Graphviz drew, by rank."""
    objects = json.loads(svg_json).get("objects", [])
    return {int(obj["name"].removeprefix("cluster_gpu_")): float(obj["bb"].split(",")[0]) for obj in objects if obj["name"].startswith("cluster_gpu_")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "block, layers, tp, pp, dp, sp",
    CASES,
    ids=[f"{b}-L{n}-tp{t}-pp{p}-dp{d}" + ("-sp" if s else "") for b, n, t, p, d, s in CASES],
)
def test_every_mesh_shape_is_laid_out_by_dot(dot_run, block, layers, tp, pp, dp, sp):
    spec = compile_text(spec_text(block, layers, tp, pp, dp, sp), "m.par")
    mesh = spec.deployment.mesh
    assert (mesh.tp, mesh.pp, mesh.dp) == (tp, pp, dp)
    # The full view draws every GPU; the compact view the GPUs of replica 0 in stage 0 (layer 0's).
    for emit, replicas, stages in ((emit_dot, range(dp), range(pp)), (emit_compact_dot, range(1), range(1))):
        done = dot_run(emit(spec), "-Tjson0")
        first_lines = "\n".join(done.stderr.decode(errors="replace").splitlines()[:3])
        assert done.returncode == 0 and not done.stderr, f"{emit.__name__}: {first_lines}"
        lefts = gpu_lefts(done.stdout)
        for stage in stages:
            ranks = [rank for rank in mesh.stage_ranks(stage) if mesh.coords(rank)[0] in replicas]
            assert set(ranks) <= set(lefts), (emit.__name__, stage, ranks, sorted(lefts))
            shown = [lefts[rank] for rank in ranks]
            assert shown == sorted(shown), (emit.__name__, stage, ranks, shown)
