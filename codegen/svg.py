"""dag.svg and dag.compact.svg: Graphviz's `dot` run on the DOT text, with a timeout.

Without `dot` on PATH the SVG renderers answer `Skip` with one notice (the same text for every
spec and view, so the build prints it once) and the build writes everything else. A full DAG
above FULL_SVG_MAX_NODES nodes is not rendered (its layout would take minutes); the compact
view always is (`par build --svg full` renders the full DAG whatever its size). If `dot` fails or runs past DOT_TIMEOUT_S, the renderer raises ArtifactError
with one line of Graphviz's output, and the build skips that SVG with a warning (Graphviz's
layout can fail on valid DOT, printing thousands of lines of its internal state after one
`Error:` line). One such failure has a way around it: Graphviz 2.43's ranking fails with
"trouble in init_rank" on some drawings whose nodes are held in GPU columns (`group`), so `dot`
runs once more on the text without the columns, and the SVG is drawn with columns that may bend.
`dot`'s SVG holds nothing run-dependent (no dates, no paths, no random ids), so the same DOT text
gives the same bytes with the same Graphviz version.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from par.codegen.dot.text import COLUMN, printable
from par.codegen.renderer import ArtifactError, Skip

if TYPE_CHECKING:  # `par build --help` reads this module's choices without loading the compiler
    import subprocess

    from par.dsl.compiler import Compiled

DOT_TIMEOUT_S = 180
MESSAGE_CHARS = 200  # the most of Graphviz's message line a warning quotes
RANKING_BUG = b"trouble in init_rank"
COLUMN_ATTRIBUTE = re.compile(rf', group="{COLUMN}[0-9_]+"')  # a node's GPU column, as the DOT views write it
FULL_SVG_MAX_NODES = 8000
# `par build --svg`: which Graphviz drawings to render.
SVG_CHOICES = {
    "auto": f"both, but dag.svg only up to {FULL_SVG_MAX_NODES:,} nodes, as its layout would take minutes (the default)",
    "full": "both, dag.svg whatever its size",
    "none": "neither, and --check checks neither; the DOT files are still written",
}
MISSING = (
    "Graphviz `dot` is not on PATH: dag.svg and dag.compact.svg are neither rendered nor checked "
    "(install Graphviz, e.g. the Debian package graphviz)"
)


def dot_program() -> str | None:
    return shutil.which("dot")


def render_svg(dot_text: str, *, program: str, timeout: float = DOT_TIMEOUT_S) -> bytes:
    """`dot -Tsvg` of `dot_text`, once more without the GPU columns if Graphviz's ranking fails
    on them; raises ArtifactError if dot fails or runs past `timeout` seconds."""
    done = run_dot(dot_text, program=program, timeout=timeout)
    if done.returncode != 0 and RANKING_BUG in done.stderr:
        loose = COLUMN_ATTRIBUTE.sub("", dot_text)
        if loose != dot_text:
            done = run_dot(loose, program=program, timeout=timeout)
    if done.returncode != 0:
        raise ArtifactError(f"`dot -Tsvg` failed (exit {done.returncode}): {first_error(done.stderr)}")
    return done.stdout


def run_dot(dot_text: str, *, program: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    import subprocess  # here: a build without drawings (`--svg none`) does not load it

    try:
        return subprocess.run(
            [program, "-Tsvg"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"`dot -Tsvg` did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ArtifactError(f"cannot run {program}: {exc.strerror or exc}") from None


def first_error(stderr: bytes) -> str:
    """The line of `dot`'s stderr that says what went wrong (its first `Error` line, else its
    first line), shortened and made printable, with how many lines followed."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    shown = next((line for line in lines if line.startswith("Error")), lines[0])
    if len(shown) > MESSAGE_CHARS:
        shown = shown[: MESSAGE_CHARS - 1] + "…"
    rest = len(lines) - 1
    return printable(shown) + (f" (and {rest:,} more lines from Graphviz)" if rest else "")


def svg_renderer(emit: Callable[[Compiled], str], *, file: str, max_nodes: int | None = None) -> Callable[[Compiled], bytes | Skip]:
    """A renderer that draws `emit`'s DOT text as `file`; it skips DAGs above `max_nodes` nodes."""

    def render(compiled: Compiled) -> bytes | Skip:
        program = dot_program()
        if program is None:
            return Skip(MISSING)
        nodes = compiled.graph.number_of_nodes()
        if max_nodes is not None and nodes > max_nodes:
            serve = compiled.graph.graph.get("serve")  # a serving spec's phase names its files
            prefix = f"dag.{serve['phase']}." if serve else "dag."
            return Skip(
                f"{compiled.deployment.name}: {file.replace('dag.', prefix, 1)} not rendered: the DAG has {nodes:,} nodes, more than "
                f"{max_nodes:,} (its layout would take minutes); {prefix}compact.svg draws it folded, and "
                f"`par build --svg full` draws it in full"
            )
        return render_svg(emit(compiled), program=program, timeout=DOT_TIMEOUT_S)

    render.__name__ = f"render_{file.replace('.', '_')}"
    return render
