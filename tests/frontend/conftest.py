import pytest

from par.dsl.checks.check import check
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.parser import parse_text


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
