"""`par build`: every artifact of every spec rendered in memory first, then written atomically.

A build that fails anywhere (a spec with errors, a renderer that raises) writes nothing, so
earlier artifacts stay byte-identical. The one exception is ArtifactError, an external program
failing on one file: that file alone is skipped, with a warning. Writing is two-phase: every changed file is first
written to a temporary file beside it, and only when all of them are on disk is each renamed
over its artifact, keeping a backup so that a failed rename undoes the ones before it (see
`write_all`). Files whose content did not change are not touched; `--check` compares instead
of writing.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
import time
import traceback
from collections.abc import Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from par.codegen.artifacts import artifact_groups, group_cost, renderers, spec_jobs
from par.codegen.renderer import ArtifactError, Renderer, Skip
from par.dsl.compiler import Compiled, prove
from par.dsl.diagnostics import Diagnostic
from par.workers import in_worker, run_each, run_tasks, worker_count


class RenderError(Exception):
    """A renderer raised something other than ArtifactError (a bug); names the artifact.
    `details` is the traceback of what it raised, in whichever process rendered it."""

    def __init__(self, name: str, details: str):
        super().__init__(f"cannot render {name}: {details.splitlines()[-1]}")
        self.name = name
        self.details = details


class Unproven(Exception):
    """The DAG of a spec compiled with `defer_proof` failed validation while its artifacts were
    rendered: `diagnostics` are the validator's; none of the spec's artifacts is kept."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__(f"the DAG is not well-formed: {len(diagnostics)} problems")
        self.diagnostics = diagnostics


SLOW_S = 1.0  # renderers slower than this are named in the progress output


@dataclass(frozen=True)
class Artifact:
    """One file of a build: where it goes and its bytes."""

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


def artifact_renderers(svg: str = "auto") -> list[tuple[str, Renderer]]:
    """(file name, renderer) for every artifact; a renderer answers `Skip` when it cannot make its
    file. `svg` says which Graphviz drawings to render (codegen.artifacts.SVG_CHOICES)."""
    return renderers(svg)


PARALLEL_MIN_NODES = 20_000  # below this, starting worker processes costs more than it saves
PROOF_COST = 2.5  # the validator's time, on the scale of codegen.artifacts.RELATIVE_COST


def render(compiled: Compiled, out_dir: Path, renderers: Sequence[tuple[str, Renderer]], *, jobs: int | None = None) -> Rendered:
    """Every artifact of one spec, in memory; raises RenderError if a renderer raises anything
    but ArtifactError, which only skips that file. A DAG of PARALLEL_MIN_NODES or more renders in
    up to `jobs` processes, this one and forked workers (par.workers; None: one per CPU), the
    same bytes as in one.

    A DAG compiled with `defer_proof` is validated here, alongside the renderers where they run
    in workers, first where they do not; raises Unproven if it fails."""
    folder = out_dir / compiled.deployment.name
    work = spec_jobs(compiled, list(renderers))
    names = [name for name, _, _ in work]
    groups = artifact_groups(names)
    processes = worker_count(jobs, len(groups) + 1) if is_large(compiled) else 1
    pending = not compiled.proven
    if pending and processes == 1:  # in turn: nothing is rendered from a DAG that fails
        _proven(prove(compiled))
        pending = False
    # The tasks: each group of artifacts, then the proof if it is pending.
    costs = [group_cost(names, group) for group in groups] + ([PROOF_COST] if pending else [])
    proof = len(groups)

    if processes > 1:
        _build_dags(compiled)
    with tempfile.TemporaryDirectory(prefix="par-render-") if processes > 1 else nullcontext() as spill:

        def task(index: int) -> list[Outcome] | list[Diagnostic]:
            if index == proof:
                return prove(compiled)
            return [_outcome(work[job][1], work[job][2], spill if in_worker() else None) for job in groups[index]]

        answers = run_tasks(task, costs, processes)
        for answered in answers[:proof]:
            for outcome in cast(list[Outcome], answered):
                outcome.unspill()
    if pending:
        _proven(cast(list[Diagnostic], answers[proof]))
        compiled.proven = True  # what the worker found, for this process's copy
    outcomes: dict[int, Outcome] = {}
    for index, group in enumerate(groups):
        outcomes.update(zip(group, cast(list[Outcome], answers[index]), strict=True))
    return _rendered(folder, names, outcomes)


def _rendered(folder: Path, names: list[str], outcomes: dict[int, Outcome]) -> Rendered:
    """One spec's artifacts from its renderers' outcomes (by job index); raises RenderError."""
    rendered = Rendered()
    for index, name in enumerate(names):
        outcome = outcomes[index]
        if outcome.failure is not None:
            raise RenderError(name, outcome.failure)
        if outcome.warning is not None:
            rendered.warnings.append(f"{name} not written: {outcome.warning}")
            continue
        if outcome.seconds >= SLOW_S:
            rendered.slow.append((name, outcome.seconds))
        if outcome.notice is not None:
            rendered.notices.append(outcome.notice)
        elif outcome.content is not None:
            rendered.artifacts.append(Artifact(folder / name, outcome.content))
    return rendered


def nodes_of(compiled: Compiled) -> int:
    """The DAG's nodes, every phase's for a serving spec."""
    return sum(len(view.compact) for _, view in compiled.phases) or len(compiled.compact)


def _build_dags(compiled: Compiled) -> None:
    """Builds the DAGs the renderers read (`Compiled.graph`) before workers fork: once, shared."""
    for _, view in compiled.phases:
        view.graph  # noqa: B018  # built on first use
    compiled.graph  # noqa: B018


def is_large(compiled: Compiled) -> bool:
    """Whether `render` shares the spec's own artifacts among processes."""
    return nodes_of(compiled) >= PARALLEL_MIN_NODES


# `par build` renders specs side by side in batches of up to this many nodes, as they compile; a
# spec as large renders alone (`render`): a batch holds its specs' DAGs in memory at once.
BATCH_NODES = 200_000
SIDE_BY_SIDE_MIN_NODES = 2_000  # a batch of fewer nodes renders in this process: a fork costs more


def render_side_by_side(
    specs: Sequence[Compiled], out_dir: Path, renderers: Sequence[tuple[str, Renderer]], *, jobs: int | None = None
) -> list[Rendered | Unproven | RenderError]:
    """`render` for each spec of a batch, what it returns or raises in the spec's place. Their
    artifacts render side by side in up to `jobs` forked workers (None: one per CPU), each group
    of artifacts (`artifact_groups`) and each pending proof taken by the next worker free, the
    costliest first; the same bytes as one process renders. A spec whose DAG fails its proof is
    Unproven, whatever its renderers did."""
    total = sum(nodes_of(compiled) for compiled in specs)
    works = [spec_jobs(compiled, list(renderers)) for compiled in specs]
    names = [[name for name, _, _ in work] for work in works]
    groups = [artifact_groups(each) for each in names]
    tasks: list[tuple[int, int | None]] = [(spec, group) for spec in range(len(specs)) for group in range(len(groups[spec]))]
    tasks += [(spec, None) for spec, compiled in enumerate(specs) if not compiled.proven]
    processes = worker_count(jobs, len(tasks)) if total >= SIDE_BY_SIDE_MIN_NODES else 1
    if processes == 1:
        return [render_or_failure(compiled, out_dir, renderers, jobs=1) for compiled in specs]

    def task(index: int) -> list[Outcome] | list[Diagnostic]:
        spec, group = tasks[index]
        if group is None:
            return prove(specs[spec])
        return [_outcome(works[spec][job][1], works[spec][job][2], spill) for job in groups[spec][group]]

    def cost(spec: int, group: int | None) -> float:
        if group is None:
            return PROOF_COST * nodes_of(specs[spec])
        # Each artifact for the DAG it draws: a serving spec's phase's, or the spec's.
        return sum(group_cost(names[spec], [job], len(works[spec][job][2].compact)) for job in groups[spec][group])

    for compiled in specs:
        _build_dags(compiled)
    with tempfile.TemporaryDirectory(prefix="par-render-") as spill:
        answers = run_each(task, [cost(spec, group) for spec, group in tasks], processes)
        for (_, group), answer in zip(tasks, answers, strict=True):
            for outcome in cast(list[Outcome], answer) if group is not None else ():
                outcome.unspill()
    results: list[Rendered | Unproven | RenderError] = []
    for spec, compiled in enumerate(specs):
        outcomes: dict[int, Outcome] = {}
        problems: list[Diagnostic] = []
        for (owner, group), answer in zip(tasks, answers, strict=True):
            if owner != spec:
                continue
            if group is None:
                problems = cast(list[Diagnostic], answer)
            else:
                outcomes.update(zip(groups[spec][group], cast(list[Outcome], answer), strict=True))
        if problems:
            results.append(Unproven(problems))
            continue
        compiled.proven = True  # what the worker found, for this process's copy
        try:
            results.append(_rendered(out_dir / compiled.deployment.name, names[spec], outcomes))
        except RenderError as exc:
            results.append(exc)
    return results


def render_or_failure(
    compiled: Compiled, out_dir: Path, renderers: Sequence[tuple[str, Renderer]], *, jobs: int | None = None
) -> Rendered | Unproven | RenderError:
    """`render`, what it raises returned instead, as `render_side_by_side` answers."""
    try:
        return render(compiled, out_dir, renderers, jobs=jobs)
    except (Unproven, RenderError) as exc:
        return exc


def _proven(problems: list[Diagnostic]) -> None:
    if problems:
        raise Unproven(problems)


@dataclass
class Outcome:
    """What one renderer answered (picklable, to come back from a worker): its file's bytes, a
    Skip's notice, an ArtifactError's message, or the traceback of anything else it raised.
    A worker leaves large bytes in a file (`spilled`): a pipe would copy them several times."""

    content: bytes | None = None
    notice: str | None = None
    warning: str | None = None
    failure: str | None = None
    seconds: float = 0.0
    spilled: str | None = None

    def unspill(self) -> None:
        if self.spilled is not None:
            self.content, self.spilled = Path(self.spilled).read_bytes(), None


SPILL_BYTES = 1 << 20


def _outcome(renderer: Renderer, target: Compiled, spill: str | None = None) -> Outcome:
    started = time.perf_counter()
    try:
        content = renderer(target)
    except ArtifactError as exc:
        return Outcome(warning=str(exc))
    except Exception as exc:
        return Outcome(failure="".join(traceback.format_exception(exc)).rstrip())
    seconds = time.perf_counter() - started
    if isinstance(content, Skip):
        return Outcome(notice=content.notice, seconds=seconds)
    data = content.encode("utf-8") if isinstance(content, str) else content
    if spill is None or len(data) < SPILL_BYTES:
        return Outcome(content=data, seconds=seconds)
    descriptor, path = tempfile.mkstemp(dir=spill)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    return Outcome(spilled=path, seconds=seconds)


def stale(artifacts: Sequence[Artifact]) -> list[tuple[Path, str]]:
    """Artifacts whose file is missing or differs, with which of the two it is."""
    found = []
    for artifact in artifacts:
        if not artifact.path.is_file():
            found.append((artifact.path, "missing"))
        elif artifact.path.read_bytes() != artifact.content:
            found.append((artifact.path, "stale"))
    return found


class WriteError(Exception):
    """Writing failed and was undone. `unrestored` lists (artifact, backup) pairs the undo could
    not put back: the artifact's earlier content is left in the backup file."""

    def __init__(self, message: str, unrestored: Sequence[tuple[Path, Path]] = ()):
        super().__init__(message)
        self.unrestored = list(unrestored)


def write_all(artifacts: Sequence[Artifact], out: Path) -> list[Path]:
    """Writes the changed artifacts so that either every one of them changes or none does.

    Each changed file is first written to a temporary file beside it. Then, one at a time, the
    artifact is kept as a backup (a hard link to it) and the temporary file renamed over it. If
    anything fails or is interrupted, the renamed artifacts are put back from their backups,
    the files and folders this write created are removed, and the error is raised again (an
    OSError as WriteError); no temporary file or backup is left either way. Returns the paths
    written. Raises WriteError, writing nothing, if an artifact's folder resolves outside `out`.
    """
    _refuse_outside(artifacts, out)
    write = _Write()
    try:
        differing = dict(stale(artifacts))
        changed = [artifact for artifact in artifacts if artifact.path in differing]
        for artifact in changed:
            write.stage(artifact)
        write.commit()
    except OSError as exc:
        unrestored = write.undo()
        raise WriteError(f"cannot write {write.current or exc.filename}: {exc.strerror or exc}", unrestored) from exc
    except BaseException:
        write.undo()
        raise
    write.finish()
    return [artifact.path for artifact in changed]


class _Write:
    """What one `write_all` has done so far, so that it can be finished or undone."""

    def __init__(self) -> None:
        self.current: Path | None = None  # the artifact being staged or renamed
        self.folders: list[Path] = []  # created, parents first
        self.staged: list[tuple[str, Path]] = []  # (temporary file, artifact)
        self.replaced: list[tuple[Path, str | None]] = []  # (artifact, backup of its earlier file or None), in order

    def stage(self, artifact: Artifact) -> None:
        self.current = artifact.path
        missing = [folder for folder in (artifact.path.parent, *artifact.path.parent.parents) if not folder.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            self.folders.append(folder)
        self.staged.append((stage(artifact.path, artifact.content), artifact.path))

    def commit(self) -> None:
        for temporary, path in self.staged:
            self.current = path
            # Recorded before the rename: undoing one that never happened changes nothing.
            self.replaced.append((path, _backup(path)))
            os.replace(temporary, path)

    def undo(self) -> list[tuple[Path, Path]]:
        """Puts every artifact back; returns those it could not, with their backups."""
        unrestored = []
        for path, backup in reversed(self.replaced):
            if backup is None:
                with suppress(OSError):  # not there, or the folder that made the rename fail
                    os.unlink(path)
                continue
            try:
                os.replace(backup, path)
                _remove(backup)  # left when the rename never happened: renaming a file onto itself does nothing
            except OSError:
                unrestored.append((path, Path(backup)))
        for temporary, _ in self.staged:
            with suppress(OSError):
                _remove(temporary)
        for folder in reversed(self.folders):
            with suppress(OSError):  # not empty: something else was put there meanwhile
                folder.rmdir()
        return unrestored

    def finish(self) -> None:
        for _, backup in self.replaced:
            if backup is not None:
                with suppress(OSError):  # the write itself is complete; a stray backup is only clutter
                    os.unlink(backup)


def _backup(path: Path) -> str | None:
    """A second name for the file at `path` (None if there is none), so it can be put back.

    A hard link keeps the artifact in place meanwhile; where the file system has none, the file
    is renamed. A folder is not kept: renaming a file over it fails, so it is never replaced.
    """
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return None
    except FileNotFoundError:
        return None
    backup = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.bak")
    try:
        os.link(path, backup, follow_symlinks=False)
    except FileExistsError:
        raise  # never rename over a file that is not ours
    except OSError:
        os.rename(path, backup)
    return backup


def _refuse_outside(artifacts: Sequence[Artifact], out: Path) -> None:
    """Every artifact's folder must lie inside `out` once resolved: a check behind the stem rule
    that also catches a folder in `out` that is a symbolic link leading out of it."""
    root = out.resolve()
    for artifact in artifacts:
        folder = artifact.path.parent.resolve()
        if folder == root or not folder.is_relative_to(root):
            raise WriteError(f"{artifact.path} is not inside {out} (its folder resolves to {folder})")


def stage(path: Path, content: bytes, mode: int | None = None) -> str:
    """Writes `content` to a new temporary file beside `path`, with `mode` (by default, that of a
    new file: readable like a normal file)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.chmod(temporary, 0o666 & ~_umask() if mode is None else mode)
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def write_atomic(path: Path, content: bytes) -> None:
    """Replaces one file's content atomically (temporary file, then rename), keeping its mode.

    A symbolic link is written through: the file it leads to is replaced and the link stays.
    """
    target = Path(os.path.realpath(path))
    temporary = stage(target, content, stat.S_IMODE(os.stat(target).st_mode))
    try:
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def _remove(name: str) -> None:
    if os.path.lexists(name):
        os.unlink(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
