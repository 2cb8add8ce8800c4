"""The block library parsed ahead of time: `blocks.parsed` beside blocks.par.

Parsing the library costs about 15 ms of every process that checks a spec; loading its blocks
costs a few. The file holds them under the SHA-256 of the library's text, the grammar, lark's
version and the modules that turn text into blocks; where any of these changed since, the library is
parsed as before, so stale blocks are never used, and nothing is written at run time.
`python -m par.dsl.frontend.library.parsed` rewrites the file, byte for byte the same in every
run; tests/frontend/test_library_parsed.py fails while it is stale. It holds plain data and the
front end's syntax classes only: reading it names no other class or function.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from importlib.resources import as_file, files
from typing import Any

from par.dsl.frontend import source as source_module
from par.dsl.frontend import spec as spec_module
from par.dsl.frontend.lark_tables import grammar_text
from par.dsl.frontend.library import library_source, parse_library
from par.dsl.frontend.spec import BlockDef

PARSED = "blocks.parsed"
# The modules that turn the library's text into blocks: a change to any may change the blocks.
PARSERS = ("parser.py", "spec.py", "source.py", "lark_tables.py")


def key() -> str | None:
    """What the library's blocks are made from; None where a parser's source cannot be read."""
    from lark import __version__ as lark_version  # loaded by then: the spec itself was parsed

    digest = hashlib.sha256(f"{lark_version}\0{library_source().text}".encode())
    try:
        for name in PARSERS:
            digest.update(b"\0" + (files("par.dsl.frontend") / name).read_bytes())
        digest.update(b"\0" + grammar_text("par.lark").encode())
    except OSError:
        return None
    return digest.hexdigest()


def load(made_from: str | None) -> tuple[BlockDef, ...] | None:
    """The shipped blocks when they were made from `made_from` (a `key`), else None."""
    if made_from is None:
        return None
    try:
        found = _SyntaxOnly(io.BytesIO((files("par.dsl.frontend.library") / PARSED).read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(found, dict) or found.get("key") != made_from:
        return None
    return found["blocks"]


class _SyntaxOnly(pickle.Unpickler):
    """Refuses every class but the front end's syntax (spec.py) and source spans (source.py)."""

    def find_class(self, module: str, name: str) -> Any:
        for allowed in (spec_module, source_module):
            if module == allowed.__name__ and isinstance(getattr(allowed, name, None), type):
                return getattr(allowed, name)
        raise pickle.UnpicklingError(f"{PARSED} names {module}.{name}; it holds syntax only")


def build() -> bytes:
    """blocks.parsed as `load` reads it, byte for byte the same in every run."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=4)
    pickler.fast = True  # no memo: which equal strings are one object varies from run to run
    pickler.dump({"key": key(), "blocks": parse_library()})
    return out.getvalue()


def main() -> None:
    """Rewrite blocks.parsed from the library beside it."""
    target = files("par.dsl.frontend.library") / PARSED
    with as_file(target) as path:
        path.write_bytes(build())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
