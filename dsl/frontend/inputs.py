"""What the command line names: spec files (or folders of them) and -D overrides."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from par.dsl.diagnostics import CompileError, error
from par.dsl.frontend.source import SourceFile, Span, TextDecodeError, decode_text
from par.dsl.limits import (
    DEFAULT_MAX_DIAGNOSTICS,
    DEFAULT_MAX_NODES,
    MAX_SPEC_BYTES,
    too_large,
)

if TYPE_CHECKING:
    from par.dsl.frontend.spec import Override

COMMAND_LINE = "<command line>"


class UsageError(Exception):
    """Bad invocation: a missing file, a malformed flag. Exit code 2."""


@dataclass
class SpecInputs:
    """Spec paths, the texts read so far (for quoting in diagnostics), the overrides and the
    limits of the run (`--max-nodes`, `--max-diagnostics`)."""

    paths: list[Path]
    overrides: list[Override]
    sources: dict[str, SourceFile] = field(default_factory=dict)
    max_nodes: int = DEFAULT_MAX_NODES
    max_diagnostics: int = DEFAULT_MAX_DIAGNOSTICS
    printed: int = 0  # diagnostics printed so far in this run

    def read(self, path: Path) -> str:
        """The text of a spec; raises CompileError if it is not UTF-8 text."""
        source = read_spec(path)
        self.sources[source.name] = source
        return source.text


def spec_name(path: str | Path) -> str:
    """The name par gives a spec file in diagnostics, banners and dag.json, with `/`: a relative
    path as given (normalised); an absolute path inside the current folder made relative to it, so
    a checkout builds the same bytes from wherever it lies; any other absolute path as it is
    (`../../tmp/x.par` would only be harder to read)."""
    given = os.fspath(path)
    if os.path.isabs(given):
        with contextlib.suppress(ValueError):  # another drive (Windows): no relative path exists
            given = _inside_cwd(given) or given
    return os.path.normpath(given).replace(os.sep, "/")


def _inside_cwd(path: str) -> str | None:
    """`path` relative to the current folder if it lies inside it, else None."""
    cwd = os.getcwd()
    lexical = os.path.relpath(path, cwd)
    if lexical.split(os.sep, 1)[0] != os.pardir:
        return lexical
    # The current folder is a resolved path; `path` may name it through a symlink (/tmp -> /private/tmp).
    folder, name = os.path.split(path)
    real = os.path.relpath(os.path.join(os.path.realpath(folder), name), os.path.realpath(cwd))
    return real if real.split(os.sep, 1)[0] != os.pardir else None


def read_spec(path: str | Path) -> SourceFile:
    """A spec file's text (UTF-8, byte-order mark dropped), named by `spec_name`; raises CompileError otherwise."""
    name = spec_name(path)
    with open(path, "rb") as file:
        data = file.read(MAX_SPEC_BYTES + 1)  # no more: a huge file is refused, not read
        if len(data) > MAX_SPEC_BYTES:
            raise CompileError([too_large(name, os.fstat(file.fileno()).st_size)])
    try:
        return SourceFile(name, decode_text(data))
    except TextDecodeError as exc:
        raise CompileError([error(exc.message, Span.point(name, exc.line, exc.col))]) from None


def spec_inputs(
    paths: Sequence[str],
    defines: Sequence[str] | None,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_diagnostics: int = DEFAULT_MAX_DIAGNOSTICS,
) -> SpecInputs:
    """The limits are the command's, where it takes them."""
    found = collect_specs(paths)
    overrides, source = parse_defines(defines or [])
    inputs = SpecInputs(found, overrides, max_nodes=max_nodes, max_diagnostics=max_diagnostics)
    inputs.sources[COMMAND_LINE] = source
    from par.dsl.frontend.library import library_source  # here: the command line starts without lark

    library = library_source()
    inputs.sources[library.name] = library
    return inputs


def collect_specs(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders as the sorted .par files beneath them."""
    return collect_files(paths, suffixes=(".par",))


def collect_files(paths: Sequence[str], *, suffixes: tuple[str, ...]) -> list[Path]:
    """Files as given, folders as the sorted files beneath them whose names end in `suffixes`
    (any case); each file once. A missing path or a folder without such files is a UsageError."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
            if not files:
                raise UsageError(f"{raw}: no {' or '.join(suffixes)} files in this folder")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise UsageError(f"{raw}: not a file or folder")
        else:
            raise UsageError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(found))


def parse_defines(defines: Sequence[str]) -> tuple[list[Override], SourceFile]:
    """`-D name=value` flags, each located on its own line of a '<command line>' source."""
    from par.dsl.frontend.parser import parse_override  # here: the command line starts without lark

    overrides = []
    for number, raw in enumerate(defines, start=1):
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise UsageError(f"-D expects name=value, not '{raw}'")
        col = len(raw) - len(value) + 1
        span = Span(COMMAND_LINE, number, col, number, len(raw) + 1)
        overrides.append(parse_override(name, value, span))
    return overrides, SourceFile(COMMAND_LINE, "\n".join(defines))
