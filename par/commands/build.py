"""`par build PATH... -o OUT [--check]`: write (or verify) every artifact of every spec."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from par.codegen.svg import SVG_CHOICES
from par.commands.common import (
    add_defines,
    add_limits,
    compile_each,
    limits,
    print_diagnostics,
    progress,
)
from par.dsl.escape import terminal
from par.dsl.frontend.inputs import spec_inputs
from par.output_folders import refuse_bad_folders

if TYPE_CHECKING:
    from par import build as driver
    from par.dsl.compiler import Compiled


def register(sub) -> None:
    parser = sub.add_parser(
        "build",
        help="write the artifacts of specs to OUT/<stem>/",
        description=(
            "Compile each spec and write OUT/<stem>/ with its artifacts. Nothing is written unless "
            "every spec compiles; unchanged files are left alone; each file is replaced atomically."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help=".par files or folders of them")
    parser.add_argument("-o", "--out", required=True, type=_out_folder, metavar="OUT", help="output folder")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing every missing or stale artifact",
    )
    parser.add_argument(
        "--svg",
        choices=tuple(SVG_CHOICES),
        default="auto",
        help="which Graphviz drawings to render (dag.svg, dag.compact.svg): "
        + "; ".join(f"{name}: {meaning}" for name, meaning in SVG_CHOICES.items()),
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        metavar="N",
        help="processes that render the artifacts, forked on Linux: specs side by side, a DAG of "
        "200,000 nodes or more on its own; default: one per CPU; 1 renders in this process alone",
    )
    add_defines(parser)
    add_limits(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from par import build as driver  # here: `par --help` starts without the emitters

    inputs = spec_inputs(args.paths, args.defines, **limits(args))
    refuse_bad_folders(inputs.paths)
    renderers = driver.artifact_renderers(args.svg)
    artifacts, notices, failed, total = [], {}, 0, len(inputs.paths)
    # Specs render side by side in batches of up to BATCH_NODES nodes, as they are compiled (par.build),
    # a spec that large alone, its own artifacts shared among processes. The DAGs are validated
    # while their artifacts render.
    rendered: dict[int, driver.Rendered | None] = {}
    batch: list[tuple[int, Path, Compiled]] = []
    batch_nodes = 0

    def flush() -> int:
        """Renders the batch; returns how many of its specs failed."""
        results = driver.render_side_by_side([compiled for _, _, compiled in batch], args.out, renderers, jobs=args.jobs)
        for (index, path, _), result in zip(batch, results, strict=True):
            rendered[index] = _report(path, result, inputs)
        nonlocal batch_nodes
        failures = sum(rendered[index] is None for index, _, _ in batch)
        batch.clear()
        batch_nodes = 0
        return failures

    for index, (path, compiled, diagnostics) in enumerate(compile_each(inputs, defer_proof=True), start=1):
        progress(f"[{index}/{total}] {path}")
        print_diagnostics(diagnostics, inputs)
        if compiled is None:
            failed += 1
            continue
        if failed:
            continue  # nothing will be written: the other specs are only compiled, for their diagnostics
        nodes = driver.nodes_of(compiled)
        if batch and batch_nodes + nodes > driver.BATCH_NODES:
            failed += flush()
            if failed:
                continue
        if nodes >= driver.BATCH_NODES:
            rendered[index] = _report(path, driver.render_or_failure(compiled, args.out, renderers, jobs=args.jobs), inputs)
            failed += rendered[index] is None
        else:
            batch.append((index, path, compiled))
            batch_nodes += nodes
    if batch and not failed:
        failed += flush()
    for index in sorted(rendered):
        each = rendered[index]
        if each is not None:
            artifacts += each.artifacts
            notices.update(dict.fromkeys(each.notices))
    for notice in notices:
        progress(f"par: note: {notice}")
    if failed:
        progress(f"par: {failed} of {total} specs failed; nothing was written")
        return 1
    if args.check:
        return _check(artifacts)
    try:
        written = driver.write_all(artifacts, args.out)
    except driver.WriteError as exc:
        progress(f"par: error: {exc}")
        for path, backup in exc.unrestored:
            progress(f"par: error: could not put back {path}; its earlier content is in {backup}")
        progress(f"par: every {'other ' if exc.unrestored else ''}artifact is as it was")
        return 1
    progress(f"par: wrote {len(written)} of {len(artifacts)} files under {args.out} ({len(artifacts) - len(written)} unchanged)")
    return 0


def _report(path: Path, result: driver.Rendered | driver.Unproven | driver.RenderError, inputs) -> driver.Rendered | None:
    """Says what went wrong rendering a spec (its DAG not well-formed, a renderer failing) or
    what was slow: the artifacts, or None."""
    from par import build as driver

    if isinstance(result, driver.Unproven):
        print_diagnostics(result.diagnostics, inputs)
        return None
    if isinstance(result, driver.RenderError):
        progress(f"par: error: {path}: {result}")
        progress(result.details)
        progress("par: this is a bug in par; please report it with the spec")
        return None
    for warning in result.warnings:
        progress(f"par: warning: {path}: {warning}")
    for name, seconds in result.slow:  # the small specs' after all the specs compiled: named
        progress(f"    {path}: {name}: {seconds:.1f} s")
    return result


def _check(artifacts) -> int:
    from par import build as driver

    problems = driver.stale(artifacts)
    for path, state in problems:
        print(terminal(f"{path}: {state}"))
    if problems:
        progress(f"par: {len(problems)} of {len(artifacts)} artifacts are missing or stale; run par build")
        return 1
    progress(f"par: all {len(artifacts)} artifacts are current")
    return 0


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
    return jobs


def _out_folder(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("OUT is empty; name a folder (use . for the current one)")
    return Path(text)
