"""The parsers load LALR tables shipped beside the grammars (par.dsl.frontend.lark_tables): the
tables are current, rebuilt byte for byte, parse exactly as a parser built from the grammar, and
are not used once the grammar or the options they were built from change."""

import pickle
from pathlib import Path

import pytest
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

import par.dsl.frontend.parser as spec_parser
from par.dsl.frontend import lark_tables
from par.dsl.frontend.lark_tables import OPTIONS, build_tables, grammar_text, lark_parser, load_tables, tables_key
from par.dsl.limits import nesting_error
from par.lint.dot_syntax import DotReadError, _ToSyntax, parse_dot

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted({*ROOT.glob("specs/*.par"), *ROOT.glob("tests/errors/*.par"), *ROOT.glob("tests/golden/specs/*.par")})
DOTS = sorted({*ROOT.glob("tests/lint/**/*.dot"), *ROOT.glob("tests/golden/*/dag*.dot")})


def cuts(text: str) -> list[str]:
    """The text and a few prefixes of it: most of them break the syntax somewhere."""
    return [text] + [text[: len(text) * k // 4] for k in range(1, 4)]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_shipped_tables_are_current(name):
    assert load_tables(name, tables_key(grammar_text(name), OPTIONS[name])) is not None, (
        f"grammar/{lark_tables.tables_name(name)} is stale: run python -m par.dsl.frontend.lark_tables"
    )


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_tables_are_rebuilt_byte_for_byte(name):
    shipped = (ROOT / "grammar" / lark_tables.tables_name(name)).read_bytes()
    assert build_tables(name) == shipped


def test_spec_parser_from_tables_parses_as_one_built_from_the_grammar(monkeypatch):
    assert SPECS and spec_parser._lark().source_path == "<deserialized>"  # the tables are in use
    grammar = grammar_text("par.lark")
    fresh = Lark(grammar, **OPTIONS["par.lark"])
    loaded = lark_parser("par.lark")
    texts = [cut for path in SPECS for cut in cuts(path.read_text(encoding="utf-8", errors="replace"))]
    for text in texts:
        if nesting_error(text, "s.par") is None:  # deeper texts never reach lark (and its trees compare recursively)
            assert _outcome(loaded, text) == _outcome(fresh, text)
    # The diagnostics a user sees, with error recovery, through the parser from the tables and a fresh one.
    from_tables = [spec_parser.parse_spec(text, "s.par") for text in texts]
    monkeypatch.setattr(spec_parser, "_lark", lambda keep_comments=False: fresh)
    assert [spec_parser.parse_spec(text, "s.par") for text in texts] == from_tables
    assert any(parsed.errors for parsed in from_tables) and any(not parsed.errors for parsed in from_tables)


def _outcome(parser: Lark, text: str):
    try:
        tree = parser.parse(text, start="start")
    except UnexpectedInput as exc:  # the same error, at the same place, expecting the same tokens
        expected = sorted(getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ())
        return type(exc).__name__, exc.line, exc.column, str(getattr(exc, "token", "")), expected
    return _flat(tree) if isinstance(tree, Tree) else tree  # the DOT parser's transformer builds tuples


def _flat(tree: Tree) -> list:
    """Every subtree with its rule, span and children (tokens in full), without recursion."""
    return [
        (sub.data, None if sub.meta.empty else (sub.meta.line, sub.meta.column, sub.meta.end_line, sub.meta.end_column),
         [(c.type, str(c), c.line, c.column) if isinstance(c, Token) else type(c).__name__ for c in sub.children])
        for sub in tree.iter_subtrees_topdown()
    ]


def test_dot_parser_from_tables_parses_as_one_built_from_the_grammar():
    assert DOTS
    fresh = Lark(grammar_text("dot.lark"), **OPTIONS["dot.lark"], transformer=_ToSyntax())
    loaded = lark_parser("dot.lark", transformer=_ToSyntax())
    outcomes = []
    for path in DOTS:
        for text in cuts(path.read_text(encoding="utf-8", errors="replace")):
            assert _outcome(loaded, text) == _outcome(fresh, text)
            try:
                outcomes.append(parse_dot(text))
            except DotReadError as exc:
                outcomes.append((exc.message, exc.line, exc.col))
    assert any(isinstance(o, tuple) and isinstance(o[0], str) for o in outcomes)  # errors were compared too


def test_comments_are_kept_by_the_parser_from_tables():
    spec, comments = spec_parser.parse_with_comments("# one\nmesh { tp 2 }  # two\n", "s.par")
    assert [c.text for c in comments] == ["# one", "# two"]


def test_tables_of_another_grammar_are_not_used(monkeypatch):
    # A grammar edited after the tables were built: the parser follows the grammar, not the tables.
    edited = grammar_text("par.lark").replace('"mesh"', '"grid"')
    assert edited != grammar_text("par.lark")
    monkeypatch.setattr(lark_tables, "grammar_text", lambda name: edited)
    parser = lark_parser("par.lark")
    assert parser.source_path != "<deserialized>"
    parser.parse("grid { tp 2 }\n", start="start")
    with pytest.raises(UnexpectedInput):
        parser.parse("mesh { tp 2 }\n", start="start")


def test_tables_with_another_key_or_foreign_content_are_refused(monkeypatch, tmp_path):
    key = tables_key(grammar_text("par.lark"), OPTIONS["par.lark"])
    assert load_tables("par.lark", key) is not None
    assert load_tables("par.lark", tables_key(grammar_text("par.lark"), {**OPTIONS["par.lark"], "strict": False})) is None
    # Tables that name a class or a function are refused rather than loaded.
    (tmp_path / "par.tables").write_bytes(pickle.dumps({"key": key, "data": Path("x"), "memo": {}}))
    monkeypatch.setattr(lark_tables, "files", lambda package: tmp_path)
    assert load_tables("par.lark", key) is None
    (tmp_path / "par.tables").write_bytes(b"not tables")
    assert load_tables("par.lark", key) is None
