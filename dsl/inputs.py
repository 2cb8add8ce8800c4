"""What the command line names: spec files (or folders of them) and -D overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import CompileError, error
from .library import library_source
from .parser import parse_override
from .source import SourceFile, Span
from .spec import Override

COMMAND_LINE = "<command line>"


class UsageError(Exception):
    """Bad invocation: a missing file, a malformed flag. Exit code 2."""


@dataclass
class SpecInputs:
    """Spec paths, the texts read so far (for quoting in diagnostics) and the overrides."""

    paths: list[Path]
    overrides: list[Override]
    sources: dict[str, SourceFile] = field(default_factory=dict)

    def read(self, path: Path) -> str:
        """The text of a spec; raises CompileError if it is not UTF-8 text."""
        data = path.read_bytes()
        name = str(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            prefix = data[: exc.start]
            line = prefix.count(b"\n") + 1
            col = len(prefix) - (prefix.rfind(b"\n") + 1) + 1
            raise CompileError(
                [error(f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded", Span(name, line, col, line, col + 1))]
            ) from None
        if text.startswith("\ufeff"):
            text = text[1:]
        self.sources[name] = SourceFile(name, text)
        return text


def spec_inputs(paths: Sequence[str], defines: Sequence[str] | None) -> SpecInputs:
    found = collect_specs(paths)
    overrides, source = parse_defines(defines or [])
    inputs = SpecInputs(found, overrides)
    inputs.sources[COMMAND_LINE] = source
    library = library_source()
    inputs.sources[library.name] = library
    return inputs


def collect_specs(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders as the sorted .par files beneath them."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            specs = sorted(p for p in path.rglob("*.par") if p.is_file())
            if not specs:
                raise UsageError(f"{raw}: no .par files in this folder")
            found.extend(specs)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise UsageError(f"{raw}: not a file or folder")
        else:
            raise UsageError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(found))


def parse_defines(defines: Sequence[str]) -> tuple[list[Override], SourceFile]:
    """`-D name=value` flags, each located on its own line of a '<command line>' source."""
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
