from pathlib import Path

import pytest

from par.dsl.compiler import compile_file, compile_text
from par.dsl.frontend.inputs import parse_defines

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shipped():
    """The DAGs of the shipped specs, compiled once."""
    cache = {}

    def get(stem: str, *defines: str):
        key = (stem, defines)
        if key not in cache:
            cache[key] = compile_file(ROOT / "specs" / f"{stem}.par", list(defines))
        return cache[key]

    return get


@pytest.fixture
def compile_spec():
    def run(text: str, *defines: str):
        overrides, _ = parse_defines(list(defines))
        return compile_text(text, "t.par", overrides)

    return run
