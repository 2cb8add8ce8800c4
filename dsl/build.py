"""`par build`: every artifact of every spec rendered in memory first, then written atomically.

A build that fails anywhere writes nothing, so earlier artifacts stay byte-identical; files
whose content did not change are not touched; `--check` compares instead of writing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .compiler import Compiled

Renderer = Callable[[Compiled], "str | bytes | None"]


@dataclass(frozen=True)
class Artifact:
    path: Path
    content: bytes


def artifact_renderers() -> list[tuple[str, Renderer]]:
    """(file name, renderer) for every artifact; a renderer may return None to skip its file."""
    from codegen.artifacts import RENDERERS  # the driver is the one place that reaches codegen

    return list(RENDERERS)


def render(compiled: Compiled, out_dir: Path, renderers: Sequence[tuple[str, Renderer]]) -> list[Artifact]:
    folder = out_dir / compiled.deployment.name
    artifacts = []
    for name, renderer in renderers:
        content = renderer(compiled)
        if content is None:
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        artifacts.append(Artifact(folder / name, data))
    return artifacts


def stale(artifacts: Sequence[Artifact]) -> list[tuple[Path, str]]:
    """Artifacts whose file is missing or differs, with which of the two it is."""
    found = []
    for artifact in artifacts:
        if not artifact.path.exists():
            found.append((artifact.path, "missing"))
        elif artifact.path.read_bytes() != artifact.content:
            found.append((artifact.path, "stale"))
    return found


def write_all(artifacts: Sequence[Artifact]) -> list[Path]:
    """Writes changed artifacts (temporary file, then rename); returns the paths written."""
    written = []
    for artifact in artifacts:
        if artifact.path.exists() and artifact.path.read_bytes() == artifact.content:
            continue
        write_atomic(artifact.path, artifact.content)
        written.append(artifact.path)
    return written


def write_atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
