"""`par build`: every artifact of every spec rendered in memory first, then written atomically.

A build that fails anywhere (a spec with errors, a renderer that raises) writes nothing, so
earlier artifacts stay byte-identical. The one exception is ArtifactError, an external program
failing on one file: that file alone is skipped, with a warning. Writing is two-phase: every changed file is first
written to a temporary file beside it, and only when all of them are on disk is each renamed
over its artifact. Files whose content did not change are not touched; `--check` compares
instead of writing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .compiler import Compiled


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


class RenderError(Exception):
    """A renderer raised something other than ArtifactError (a bug); names the artifact.
    `__cause__` is what it raised."""

    def __init__(self, name: str, cause: BaseException):
        super().__init__(f"cannot render {name}: {cause}")
        self.name = name


Renderer = Callable[[Compiled], "str | bytes | Skip"]
SLOW_S = 1.0  # renderers slower than this are named in the progress output


@dataclass(frozen=True)
class Artifact:
    path: Path
    content: bytes


@dataclass
class Rendered:
    """The artifacts of one spec, the notices of its skipped files, the warnings of the files
    that failed (ArtifactError) and the slow renderers."""

    artifacts: list[Artifact] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    slow: list[tuple[str, float]] = field(default_factory=list)


def artifact_renderers() -> list[tuple[str, Renderer]]:
    """(file name, renderer) for every artifact; a renderer answers `Skip` when it cannot make its file."""
    from codegen.artifacts import (
        renderers,  # the driver is the one place that reaches codegen
    )

    return renderers()


def render(compiled: Compiled, out_dir: Path, renderers: Sequence[tuple[str, Renderer]]) -> Rendered:
    """Every artifact of one spec, in memory; raises RenderError if a renderer raises anything
    but ArtifactError, which only skips that file."""
    folder = out_dir / compiled.deployment.name
    rendered = Rendered()
    for name, renderer in renderers:
        started = time.perf_counter()
        try:
            content = renderer(compiled)
        except ArtifactError as exc:
            rendered.warnings.append(f"{name} not written: {exc}")
            continue
        except Exception as exc:
            raise RenderError(name, exc) from exc
        seconds = time.perf_counter() - started
        if seconds >= SLOW_S:
            rendered.slow.append((name, seconds))
        if isinstance(content, Skip):
            rendered.notices.append(content.notice)
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        rendered.artifacts.append(Artifact(folder / name, data))
    return rendered


def stale(artifacts: Sequence[Artifact]) -> list[tuple[Path, str]]:
    """Artifacts whose file is missing or differs, with which of the two it is."""
    found = []
    for artifact in artifacts:
        if not artifact.path.is_file():
            found.append((artifact.path, "missing"))
        elif artifact.path.read_bytes() != artifact.content:
            found.append((artifact.path, "stale"))
    return found


def write_all(artifacts: Sequence[Artifact]) -> list[Path]:
    """Writes changed artifacts: all to temporary files first, then each renamed into place.

    If any temporary file cannot be written, the others are removed and no artifact changes.
    Returns the paths written.
    """
    differing = dict(stale(artifacts))
    changed = [artifact for artifact in artifacts if artifact.path in differing]
    staged: list[tuple[str, Path]] = []
    try:
        for artifact in changed:
            staged.append((stage(artifact.path, artifact.content), artifact.path))
    except BaseException:
        for temporary, _ in staged:
            _remove(temporary)
        raise
    for temporary, path in staged:
        os.replace(temporary, path)
    return [path for _, path in staged]


def stage(path: Path, content: bytes) -> str:
    """Writes `content` to a new temporary file beside `path` (readable like a normal file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.chmod(temporary, 0o666 & ~_umask())
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def write_atomic(path: Path, content: bytes) -> None:
    """Replaces one file atomically (temporary file, then rename)."""
    os.replace(stage(path, content), path)


def _remove(temporary: str) -> None:
    if os.path.exists(temporary):
        os.unlink(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
