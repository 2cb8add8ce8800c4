"""Lines are numbered as the parser numbers them: only a newline ends one. Other characters
that Unicode calls line breaks must not shift the lines that diagnostics quote."""

import pytest

from par.cli import main
from par.dsl.frontend.inputs import spec_name
from par.dsl.frontend.source import SourceFile

NOT_BREAKS = {"form_feed": "\f", "vertical_tab": "\v", "nel": "\x85", "line_sep": "\u2028", "para_sep": "\u2029", "file_sep": "\x1c"}
BAD = "model m : gpt { layers 2  hidden 63  heads 4  batch 4  seq 8 }"
COLUMN = BAD.index("heads 4") + len("heads ") + 1  # the error points at the heads value


@pytest.mark.parametrize("char", NOT_BREAKS.values(), ids=NOT_BREAKS.keys())
def test_a_break_character_in_a_comment_does_not_shift_quoted_lines(tmp_path, capsys, char):
    path = tmp_path / "s.par"
    path.write_text(f"# one{char}two{char}three\n{BAD}\n", encoding="utf-8")
    assert main(["check", str(path)]) == 1
    headline, quoted, caret, *_ = capsys.readouterr().err.splitlines()
    assert headline.startswith(f"{spec_name(path)}:2:{COLUMN}: error: hidden (63) is not divisible by heads")
    assert quoted == "    " + BAD
    assert caret == "    " + " " * (COLUMN - 1) + "^"


def test_crlf_ends_a_line_and_its_cr_is_not_quoted():
    source = SourceFile("s.par", "# a\fb\r\nmodel m\r\n\r\nlast")
    assert [source.line(n) for n in range(1, 6)] == ["# a\fb", "model m", "", "last", None]
    assert SourceFile("s.par", "a\n").line(2) is None  # a final newline starts no line


def test_fmt_keeps_blank_lines_after_a_comment_with_a_break_character(tmp_path, capsys):
    path = tmp_path / "s.par"
    text = "# one\u2028two\nmodel m : gpt { layers 2  hidden 64  heads 4  batch 4  seq 8 }\n\nmesh { tp 2 }\n"
    path.write_text(text, encoding="utf-8")
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == text
