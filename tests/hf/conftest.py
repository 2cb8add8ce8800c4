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
