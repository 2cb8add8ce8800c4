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


@pytest.fixture(scope="session")
def variant_models():
    """The model.py of each of small_models.VARIANTS, in order, written once for every test that reads them."""
    from small_models import SPECS, VARIANTS, compile_small, write_model

    from par.dsl.compiler import compile_file

    with tempfile.TemporaryDirectory(prefix="par-torch-") as folder:
        yield [
            write_model(compile_small(stem, defines) if defines else compile_file(SPECS / f"{stem}.par"), Path(folder) / f"{stem}{index}")
            for index, (stem, defines) in enumerate(VARIANTS)
        ]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (distributed runs, type checking)")
