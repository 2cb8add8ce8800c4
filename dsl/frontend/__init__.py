"""The front end: spec text -> Spec (frozen dataclasses that keep their source spans)."""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import PathFinder
from types import ModuleType

# lark imports regex and interegular when they are installed, 18 ms of every command that
# parses: regex for `Lark(regex=True)` and grammars with Unicode categories, interegular to
# check a grammar's terminals in strict mode. par's parsers load from their shipped tables
# (lark_tables.py) and need neither, so until lark is imported each stands for itself deferred:
# lark sees it installed, as it would, and it is loaded when lark first uses it (a grammar
# built from its text: tables being built, or stale).
OPTIONAL = ("regex", "interegular")


class _Deferred(ModuleType):
    """An installed module not loaded yet: reading one of its attributes loads it, and this
    object takes on its attributes."""

    def __getattr__(self, name: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def lark_imported() -> None:
    """Called once lark is imported: a later `import regex` (or interegular) loads the module."""
    for name in OPTIONAL:
        if isinstance(sys.modules.get(name), _Deferred):
            del sys.modules[name]


if "lark" not in sys.modules:
    for _name in OPTIONAL:
        if _name not in sys.modules and PathFinder.find_spec(_name) is not None:
            sys.modules[_name] = _Deferred(_name)
