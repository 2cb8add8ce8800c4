"""What an artifact renderer is, and what it may answer instead of its file's content."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `par build --help` loads this module (through codegen.svg) without the compiler
    from par.dsl.compiler import Compiled


@dataclass(frozen=True)
class Skip:
    """A renderer's answer when it cannot make its file here (e.g. Graphviz is not installed).

    The build goes on without that file, neither writing nor checking it, and prints `notice`
    once however many specs and renderers give the same notice.
    """

    notice: str


class ArtifactError(Exception):
    """A renderer could not make its file for a reason that is not a bug in par (e.g. `dot`
    failed or timed out). The build goes on without that file, neither writing nor checking it,
    and warns with the message, which should be one short line."""


Renderer = Callable[["Compiled"], "str | bytes | Skip"]
