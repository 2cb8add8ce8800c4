"""The one Jinja environment: templates hold layout only; view-models are computed in Python.

Compiling the templates costs about 50 ms of every `par build`; loading them compiled costs about
1 ms. `templates/templates.bytecode` holds them compiled ahead of time, each under a key made of
its name, Jinja's version and the environment's options, with Jinja's own guards: the checksum of
the template's text and the Python version of the bytecode. A template whose entry is missing or
fails a guard (it was edited, or another Jinja or Python runs) is compiled from its text as
before, so a stale entry is never used; nothing is written at run time.
`python -m par.codegen.templating` rewrites the file; `tests/build/test_template_bytecode.py`
fails while it is stale.
"""

from __future__ import annotations

import hashlib
import marshal
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import BytecodeCache, Environment, PackageLoader, StrictUndefined
from jinja2.bccache import Bucket

OPTIONS: dict[str, Any] = {
    "undefined": StrictUndefined,
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "autoescape": False,
}
BYTECODE = "templates.bytecode"


class Shipped(BytecodeCache):
    """The templates compiled ahead of time (`entries`: cache key -> bucket bytes); read-only."""

    def __init__(self, entries: dict[str, bytes]) -> None:
        self.entries = entries

    def get_cache_key(self, name: str, filename: str | None = None) -> str:
        """By name, not path (the same in every checkout), with what else shapes the compiled code."""
        described = "\0".join([name, jinja2.__version__, repr(sorted(OPTIONS.items()))])
        return hashlib.sha256(described.encode("utf-8")).hexdigest()

    def load_bytecode(self, bucket: Bucket) -> None:
        data = self.entries.get(bucket.key)
        if data is not None:
            bucket.bytecode_from_string(data)  # resets the bucket if the text or Python changed

    def dump_bytecode(self, bucket: Bucket) -> None:
        pass  # nothing is written at run time


def shipped() -> Shipped:
    path = files("par.templates") / BYTECODE
    try:
        entries = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):  # missing or unreadable: compile every template
        entries = {}
    return Shipped(entries if isinstance(entries, dict) else {})


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("par.templates", "."),  # a package resource: zipped installs work
        bytecode_cache=shipped(),
        **OPTIONS,
    )


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def compiled_entries(env: Environment) -> dict[str, bytes]:
    """Every template of `env` compiled, as `Shipped` holds them: code objects named after the
    template, not its path."""
    cache = env.bytecode_cache
    assert isinstance(cache, Shipped) and env.loader is not None
    entries = {}
    for name in sorted(name for name in env.list_templates() if name.endswith(".jinja")):
        source, _, _ = env.loader.get_source(env, name)
        bucket = Bucket(env, cache.get_cache_key(name), cache.get_source_checksum(source))
        bucket.code = env.compile(source, name, name)
        entries[bucket.key] = bucket.bytecode_to_string()
    return entries


def main() -> None:
    """Rewrite templates/templates.bytecode from the templates beside it."""
    target = Path(str(files("par.templates") / BYTECODE))
    target.write_bytes(marshal.dumps(compiled_entries(environment())))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
