"""`par new --from-hf config.json [mesh options] > model.par`: a spec from a transformers config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from par.commands.common import _positive
from par.dsl.diagnostics import CompileError, format_all
from par.dsl.frontend.inputs import UsageError, spec_name
from par.dsl.frontend.source import SourceFile
from par.hf_config import DTYPES, SUPPORTED, Mesh, spec_from_config

DESCRIPTION = f"""\
Write a .par spec to stdout from a Hugging Face transformers config.json (model_type
{", ".join(SUPPORTED)}), deployed on the mesh the options give. Every config setting the spec
cannot express is an error at its line of the file; dropout, which par does not apply, is a
warning. The spec is checked as `par check` checks it before it is written."""


def register(sub) -> None:
    parser = sub.add_parser("new", help="write a spec from a Hugging Face config.json", description=DESCRIPTION)
    parser.add_argument("--from-hf", required=True, metavar="CONFIG", help="a transformers config.json (or its folder)")
    parser.add_argument("--name", help="the model's name in the spec (default: the config's model_type)")
    for axis, what in (("tp", "tensor"), ("pp", "pipeline"), ("dp", "data")):
        parser.add_argument(f"--{axis}", type=_positive, default=1, metavar="N", help=f"{what}-parallel degree (default 1)")
    parser.add_argument(
        "--ep", type=_positive, default=1, metavar="N", help="expert-parallel degree, dividing --dp (default 1)"
    )
    parser.add_argument("--sp", action="store_true", help="sequence parallelism on the tensor-parallel axis")
    parser.add_argument("--microbatches", type=_positive, metavar="N", help="microbatches per step and replica (default: pp)")
    parser.add_argument("--batch", type=_positive, metavar="N", help="global batch in samples (default: dp x microbatches)")
    parser.add_argument("--seq", type=_positive, metavar="N", help="sequence length (default: the model's context length)")
    parser.add_argument(
        "--dtype",
        choices=sorted(set(DTYPES.values())),
        help="parameters and activations (default: the config's dtype, else fp32 as transformers loads it)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # here: every other command, and `par --version`, starts without the compiler and the parser
    from par.dsl.compiler import compile_text
    from par.dsl.frontend.format import format_spec
    from par.dsl.frontend.library import library_source
    from par.dsl.frontend.parser import parse_with_comments

    path = Path(args.from_hf)
    if path.is_dir():
        path = path / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    file = spec_name(path)
    mesh = Mesh(args.tp, args.pp, args.dp, args.sp, args.microbatches, args.batch, args.seq, args.dtype, args.name, args.ep)
    if args.name is not None and not args.name.isidentifier():
        raise UsageError(f"--name {args.name!r}: a spec name is letters, digits and _, not starting with a digit")
    spec, diagnostics = spec_from_config(text, file, mesh)
    sources = {file: SourceFile(file, text)}
    if diagnostics:
        print(format_all(diagnostics, sources), file=sys.stderr)
    if spec is None:
        return 1
    # The spec as `par fmt` prints it, and compiled as `par check` does: par new writes nothing it would reject.
    name = f"<spec written from {file}>"
    try:
        spec = format_spec(*parse_with_comments(spec, name), spec)
        compile_text(spec, name)
    except CompileError as exc:
        library = library_source()
        sources |= {name: SourceFile(name, spec), library.name: library}
        print(format_all(exc.diagnostics, sources), file=sys.stderr)
        return 1
    sys.stdout.write(spec)
    return 0
