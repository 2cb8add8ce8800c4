"""Compile a spec small and write its model.py: the inputs of the distributed tests."""

from __future__ import annotations

from pathlib import Path

from codegen.pytorch import emit_model
from dsl.compiler import Compiled, compile_file, compile_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
# Every production spec shrunk to sizes a 2-core machine runs in a second.
SMALL = ["hidden=64", "heads=4", "ffn=256", "seq=8", "dtype=fp32"]


def compile_small(spec: str, defines: list[str]) -> Compiled:
    return compile_file(SPECS / f"{spec}.par", SMALL + defines)


def write_model(compiled: Compiled, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.py"
    path.write_text(emit_model(compiled))
    return path


def compile_spec_text(text: str, name: str = "custom.par") -> Compiled:
    from dsl.inputs import parse_defines

    overrides, _ = parse_defines([])
    return compile_text(text, name, overrides)
