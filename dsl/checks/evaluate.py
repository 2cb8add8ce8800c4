"""Evaluate setting expressions: order-independent, exact integer arithmetic, cycles reported."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping

from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span
from par.dsl.frontend.spec import BinOp, Expr, Neg, Num, Ref

Number = int | float

# Far beyond any real deployment; keeps arithmetic on hostile input cheap.
_MAX_MAGNITUDE = 10**30


class EvalError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def did_you_mean(name: str, known) -> str | None:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"did you mean '{close[0]}'?" if close else None


class Namespace:
    """Names bound to expressions, evaluated on first use; `fixed` holds already-known numbers."""

    def __init__(
        self,
        exprs: Mapping[str, Expr],
        fixed: Mapping[str, Number] | None = None,
        accept: Callable[[str, Number], Number] | None = None,
    ):
        """`accept(name, value)` vets each computed value: it returns the value to keep, or
        raises EvalError or AlreadyReported, after which every use of the name is quiet."""
        self._exprs = dict(exprs)
        self._accept = accept
        self._values: dict[str, Number] = dict(fixed or {})
        self._active: list[str] = []
        self._failed: set[str] = set()

    def names(self) -> set[str]:
        return set(self._exprs) | set(self._values)

    def get(self, name: str) -> Number:
        """The value of `name`; raises EvalError (once per name) when it cannot be computed."""
        if name in self._values:
            return self._values[name]
        if name in self._active:
            cycle = " -> ".join(self._active[self._active.index(name) :] + [name])
            raise EvalError(error(f"'{name}' is defined in terms of itself ({cycle})", self._exprs[name].span))
        if name in self._failed:
            raise AlreadyReported()
        self._active.append(name)
        try:
            value = evaluate(self._exprs[name], self.lookup)
            if self._accept is not None:
                value = self._accept(name, value)
        except (EvalError, AlreadyReported):
            self._failed.add(name)
            raise
        finally:
            self._active.pop()
        self._values[name] = value
        return value

    def depends_on(self, expr: Expr) -> list[str]:
        """The names `expr` reads, directly or through other names, each once, first use first."""
        found: dict[str, None] = {}
        pending = [expr]
        while pending:
            item = pending.pop()
            if isinstance(item, Ref) and item.name not in found:
                found[item.name] = None
                if item.name in self._exprs:
                    pending.append(self._exprs[item.name])
            elif isinstance(item, BinOp):
                pending += (item.right, item.left)
            elif isinstance(item, Neg):
                pending.append(item.operand)
        return list(found)

    def lookup(self, name: str, span: Span) -> Number:
        """`get` for a name written at `span`: an unknown name is an EvalError there."""
        if name not in self._exprs and name not in self._values:
            hint = did_you_mean(name, self.names())
            raise EvalError(error(f"unknown name '{name}'", span, hint=hint))
        return self.get(name)


class AlreadyReported(Exception):
    """A name whose own error was already reported; its dependents stay quiet."""


def evaluate(expr: Expr, lookup: Callable[[str, Span], Number]) -> Number:
    try:
        return _eval(expr, lookup)
    except RecursionError:
        raise EvalError(error("expression is nested too deeply", expr.span)) from None


def _eval(expr: Expr, lookup: Callable[[str, Span], Number]) -> Number:
    if isinstance(expr, Num):
        return _bounded(expr.value, expr.span)
    if isinstance(expr, Ref):
        return lookup(expr.name, expr.span)
    if isinstance(expr, Neg):
        return -_eval(expr.operand, lookup)
    if isinstance(expr, BinOp):
        left, right = _eval(expr.left, lookup), _eval(expr.right, lookup)
        return _bounded(_apply(expr, left, right), expr.span)
    raise TypeError(f"not an expression: {expr!r}")


def _apply(expr: BinOp, left: Number, right: Number) -> Number:
    if expr.op == "+":
        return left + right
    if expr.op == "-":
        return left - right
    if expr.op == "*":
        return left * right
    if right == 0:
        raise EvalError(error(f"division by zero: {_show(left)} / 0", expr.span))
    if isinstance(left, int) and isinstance(right, int):
        if left % right:
            raise EvalError(
                error(
                    f"{_show(left)} / {_show(right)} is not a whole number",
                    expr.span,
                    hint="sizes must divide exactly; change one of the two numbers",
                )
            )
        return left // right
    return left / right


def _bounded(value: Number, span: Span) -> Number:
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > _MAX_MAGNITUDE:
        raise EvalError(error("number is absurdly large", span))
    return value


def _show(value: Number) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
