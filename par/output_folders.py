"""The folder `OUT/<stem>/` each spec builds into, and the one rule for which stems may name one.

A stem must name exactly one folder inside OUT on every system a repository of artifacts may be
checked out on (Linux, macOS, Windows): not empty, not `.` or `..`, no path separator (`/`, `\\`),
no control character, none of the characters Windows forbids (`<>:"|?*`), no trailing dot or
space (Windows drops them, so `a..par` would land in `a/`), and not a Windows device name
(`CON`, `NUL`, `COM1`, ...). Two specs clash when their stems are equal after Unicode NFC
normalisation and case folding, as on the case-insensitive file systems of macOS and Windows.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

from par.dsl.escape import terminal
from par.dsl.frontend.inputs import UsageError
from par.dsl.frontend.source import stem

FORBIDDEN = '<>:"|?*'  # forbidden on Windows; neither slash ever reaches a stem
DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))}


def refuse_bad_folders(paths: Sequence[Path]) -> None:
    """Raises UsageError at the first spec whose stem cannot name its folder, or that shares one."""
    owners: dict[str, Path] = {}
    for path in paths:
        problem = folder_problem(path)
        if problem:
            raise UsageError(f"{terminal(str(path))}: cannot build into <OUT>/<stem>/: {problem}; rename the file")
        name = stem(str(path))
        key = unicodedata.normalize("NFC", name).casefold()
        owner = owners.setdefault(key, path)
        if owner != path and owner.resolve() != path.resolve():
            other = stem(str(owner))
            why = "" if other == name else " (macOS and Windows do not tell these names apart)"
            raise UsageError(f"{terminal(str(owner))} and {terminal(str(path))} would both build into <OUT>/{other}/{why}; rename one")


def folder_problem(path: Path) -> str | None:
    """Why the stem of the spec `path` cannot name its output folder, or None if it can."""
    if "\\" in path.name:  # allowed in a POSIX file name, but `stem` (like Windows) splits there
        return "its name contains a backslash, which cannot be in a folder name"
    name = stem(str(path))
    if name in ("", ".", ".."):
        return f"its stem {name!r} is not a folder name"
    for char in name:
        if char in FORBIDDEN or not char.isprintable() and ord(char) < 0xA0:
            return f"its stem contains {_char(char)}, which cannot be in a folder name"
    if name[-1] in ". ":
        return f"its stem ends in {_char(name[-1])}, which Windows drops from folder names"
    if name.split(".", 1)[0].rstrip(" ").upper() in DEVICES:
        return f"its stem {name!r} is a device name on Windows"
    return None


def _char(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"
