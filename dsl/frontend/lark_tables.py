"""Lark parsers loaded from LALR tables built ahead of time, shipped beside the grammars.

Building the tables from a grammar costs about 0.3 s of every process; loading them costs a few
milliseconds. `grammar/<name>.tables` holds them with a key: the SHA-256 of the grammar's text,
the parser options and lark's version. A parser whose tables are missing or carry another key
(the grammar was edited, or another lark is installed) is built from the grammar as before, so
stale tables are never used; nothing is written at run time. `python -m par.dsl.frontend.lark_tables`
rewrites the tables, byte for byte the same in every run; `tests/frontend/test_lark_tables.py`
fails while they are stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
from importlib.resources import files
from typing import Any

from lark import Lark
from lark import __version__ as LARK_VERSION
from lark.grammar import Rule
from lark.lexer import TerminalDef

from par.dsl.frontend import lark_imported

lark_imported()  # lark has what it may use of regex and interegular (par.dsl.frontend)

# Each grammar's parser options: what its tables are built with. Options that only attach code
# (a transformer, lexer callbacks) are given when a parser is made and are not part of the tables.
OPTIONS: dict[str, dict[str, Any]] = {
    "par.lark": {
        "parser": "lalr",
        "strict": True,
        "start": ["start", "override"],
        "propagate_positions": True,
        "maybe_placeholders": True,
    },
    "dot.lark": {"parser": "lalr", "lexer": "contextual", "strict": True, "maybe_placeholders": True},
}


def grammar_text(name: str) -> str:
    return (files("par.grammar") / name).read_text(encoding="utf-8")


def tables_key(grammar: str, options: dict[str, Any]) -> str:
    """What the tables were built from; tables with any other key are not used."""
    described = "\0".join([grammar, repr(sorted(options.items())), LARK_VERSION])
    return hashlib.sha256(described.encode("utf-8")).hexdigest()


def lark_parser(name: str, **code: Any) -> Lark:
    """The parser of grammar `name` (a key of OPTIONS) with `code` (transformer, lexer_callbacks):
    from its shipped tables when they are current, else built from the grammar."""
    grammar, options = grammar_text(name), OPTIONS[name]
    tables = load_tables(name, tables_key(grammar, options))
    if tables is None:
        return Lark(grammar, **options, **code)
    return Lark._load_from_dict(tables["data"], tables["memo"], **code)


def load_tables(name: str, key: str) -> dict[str, Any] | None:
    """The shipped tables of grammar `name` when their key is `key`, else None."""
    try:
        raw = (files("par.grammar") / tables_name(name)).read_bytes()
    except OSError:
        return None
    try:
        tables = _PlainData(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError):
        return None
    if not isinstance(tables, dict) or tables.get("key") != key:
        return None
    return tables


def tables_name(name: str) -> str:
    return name.removesuffix(".lark") + ".tables"


class _PlainData(pickle.Unpickler):
    """Tables are dicts, lists, tuples, strings and numbers: anything naming a class or function
    is refused, so a damaged or foreign file can make nothing run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"tables name {module}.{name}; they hold plain data only")


def build_tables(name: str) -> bytes:
    """The tables of grammar `name`, as `lark_parser` reads them, byte for byte the same in every run."""
    grammar, options = grammar_text(name), OPTIONS[name]
    data, memo = Lark(grammar, **options).memo_serialize([TerminalDef, Rule])
    data["parser"]["parser"] = _canonical(data["parser"]["parser"])
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=4)
    pickler.fast = True  # no memo: which equal strings are one object varies from run to run
    pickler.dump({"key": tables_key(grammar, options), "data": data, "memo": memo})
    return out.getvalue()


def _canonical(table: dict[str, Any]) -> dict[str, Any]:
    """The serialized LALR table with its states numbered in breadth-first order from the start
    states (actions taken in order of token name) and its tokens numbered alphabetically: lark
    numbers both in an order that varies from run to run."""
    names = table["tokens"]
    states = {state: {names[token]: action for token, action in actions.items()} for state, actions in table["states"].items()}
    number: dict[int, int] = {}
    queue = [table["start_states"][start] for start in sorted(table["start_states"])]
    for state in queue:  # grows as it goes: a breadth-first walk
        if state in number:
            continue
        number[state] = len(number)
        queue += [arg for _, (action, arg) in sorted(states[state].items()) if action == 0]  # shifts and gotos
    assert len(number) == len(states), "every state is reachable from a start state"
    tokens = sorted({name for actions in states.values() for name in actions})
    index = {name: i for i, name in enumerate(tokens)}

    def renumbered(action: tuple[int, Any]) -> tuple[int, Any]:
        kind, arg = action
        return (kind, number[arg]) if kind == 0 else (kind, arg)

    return {
        "tokens": dict(enumerate(tokens)),
        "states": {
            number[state]: {index[name]: renumbered(action) for name, action in sorted(states[state].items())}
            for state in sorted(states, key=number.__getitem__)
        },
        "start_states": {start: number[state] for start, state in sorted(table["start_states"].items())},
        "end_states": {end: number[state] for end, state in sorted(table["end_states"].items())},
    }


def write_tables(grammar_folder: str) -> None:
    """Rewrites every grammar's tables in `grammar_folder` (the source tree's grammar/)."""
    for name in OPTIONS:
        with open(os.path.join(grammar_folder, tables_name(name)), "wb") as out:
            out.write(build_tables(name))


def main() -> int:
    folder = os.path.dirname(str(files("par.grammar") / "par.lark"))
    write_tables(folder)
    print(f"wrote {', '.join(tables_name(name) for name in OPTIONS)} in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
