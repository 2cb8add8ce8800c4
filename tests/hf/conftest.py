"""The Hugging Face interop tests: transformers as the independent oracle (hf_models.py); the launch helpers of tests/torch."""

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "torch"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the oracle models, shared by the test modules


@pytest.fixture
def workdir():
    """A fresh folder outside pytest's basetemp, which another session may prune while ranks write to it."""
    with tempfile.TemporaryDirectory(prefix="par-hf-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (its transformers model, the folder save_pretrained wrote): one of each per module."""
    from hf_models import hf_model  # transformers is imported by the tests that ask for it

    made = {}

    def get(family: str):
        if family not in made:
            folder = tmp_path_factory.mktemp(family)
            model = hf_model(family)
            model.save_pretrained(folder)
            made[family] = (model, folder)
        return made[family]

    return get
