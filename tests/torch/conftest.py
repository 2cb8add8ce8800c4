import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def workdir():
    """A fresh folder of the test's own. Not under pytest's basetemp: another pytest session
    started on the same machine prunes old basetemps, also while ranks still write to them."""
    with tempfile.TemporaryDirectory(prefix="par-torch-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def module_dir():
    with tempfile.TemporaryDirectory(prefix="par-torch-") as folder:
        yield Path(folder)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (distributed runs, type checking)")
