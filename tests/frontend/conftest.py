import pytest

from dsl.check import check
from dsl.diagnostics import CompileError
from dsl.parser import parse_text


def diagnostics_of(text: str, *, overrides=()):
    """Every diagnostic the front end reports for `text` (empty when it checks clean)."""
    try:
        check(parse_text(text, "t.par"), overrides)
    except CompileError as exc:
        return exc.diagnostics
    return []


@pytest.fixture
def errors_of():
    def run(text: str, overrides=()):
        return [d for d in diagnostics_of(text, overrides=overrides) if d.is_error]

    return run
