"""The artifacts of the specs in tests/golden/specs/, byte for byte (python tests/golden/regen.py)."""

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STEMS = sorted(path.stem for path in (HERE / "specs").glob("*.par"))

_spec = importlib.util.spec_from_file_location("golden_regen", HERE / "regen.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    code, output = regen.build(out)
    assert code == 0, output
    return out


def test_every_golden_spec_has_its_folder():
    assert STEMS
    assert sorted(path.name for path in HERE.iterdir() if path.is_dir() and path.name not in ("specs", "__pycache__")) == STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_artifacts_match_the_golden_files(built, stem):
    golden = sorted(path for path in (HERE / stem).iterdir() if path.is_file())
    assert {"dag.json", "dag.dot", "dag.compact.dot"} <= {path.name for path in golden}
    for path in golden:
        assert (built / stem / path.name).read_bytes() == path.read_bytes(), f"{stem}/{path.name} differs; run python tests/golden/regen.py and review the diff"
