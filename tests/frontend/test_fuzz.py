"""Mutated, truncated and random input never escapes the front end as an unexpected exception."""

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from par.dsl.checks.check import check
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.format import format_spec
from par.dsl.frontend.parser import parse_spec, parse_with_comments
from par.dsl.frontend.source import Span
from par.dsl.lowering.lower import lower

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [path.read_text(encoding="utf-8") for path in sorted((ROOT / "specs").glob("*.par"))]
SEEDS.append((ROOT / "dsl" / "frontend" / "library" / "blocks.par").read_text(encoding="utf-8") + SEEDS[0])
TOKENS = ["model", "mesh", "block", "place", "after", "as", "strict", "sp", "stages", "{", "}", "(", ")",
          "[", "]", "..", ",", "=", "-", "*", "/", "+", "0", "1", "7", "4096", "x", "tp", "heads", "#", "\n", "1f1b"]


def front_end(text: str) -> None:
    """Parse (going on past syntax errors), check what parsed and lower; only CompileError may
    come out, with at least one diagnostic. Each syntax error lies past the one before: recovery
    never reports a place twice."""
    parsed = parse_spec(text, "fuzz.par")
    places = [(d.span.line, d.span.col) for d in parsed.errors]
    assert places == sorted(set(places)) and all(line >= 1 for line, _ in places)
    try:
        deployment, _ = check(parsed.spec)
        if not parsed.errors:
            lower(deployment)
    except CompileError as exc:
        diagnostics = [*parsed.errors, *exc.diagnostics]
        assert diagnostics and all(d.span is None or d.span.line >= 1 for d in diagnostics)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "delete", "insert", "token"]))
        if action == "cut":
            text = text[:position]
        elif action == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 12)) :]
        elif action == "insert":
            text = text[:position] + draw(st.text(max_size=6)) + text[position:]
        else:
            text = text[:position] + " " + draw(st.sampled_from(TOKENS)) + " " + text[position:]
    return text


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated())
def test_mutated_specs_give_a_spec_or_diagnostics(text):
    front_end(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_gives_diagnostics(text):
    front_end(text)


@FUZZ
@given(mutated())
def test_whatever_parses_formats_to_the_same_spec(text):
    try:
        spec, comments = parse_with_comments(text, "fuzz.par")
    except CompileError:
        return
    formatted = format_spec(spec, comments, text)
    again, again_comments = parse_with_comments(formatted, "fuzz.par")
    assert strip_spans(again) == strip_spans(spec)
    assert [c.text for c in again_comments] == [c.text for c in comments]
    assert format_spec(again, again_comments, formatted) == formatted


def strip_spans(value):
    """The spec with every source span removed, for comparing two parses of different text."""
    if isinstance(value, Span):
        return "span"
    if isinstance(value, tuple):
        return tuple(strip_spans(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__,) + tuple(
            strip_spans(getattr(value, name)) for name in value.__dataclass_fields__ if "span" not in name
        )
    return value
