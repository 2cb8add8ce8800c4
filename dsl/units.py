"""Numbers as people read them: decimal SI prefixes, fixed precision, rank ranges.

Shared by every printed or drawn output: reports, drawings, lint findings, `par explain`.
"""

from __future__ import annotations

from collections.abc import Sequence

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, unit: str) -> str:
    """4 significant digits and a decimal prefix: si(1.5e9, "B") == "1.500 GB"."""
    magnitude = abs(value)
    for scale, prefix in _PREFIXES:
        if magnitude >= scale:
            return f"{value / scale:.4g} {prefix}{unit}".replace("e+", "e")
    if value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.4g} {unit}"


def count(value: float) -> str:
    """Parameters and other plain counts: 201.3M, 6.4k, 512."""
    return si(value, "").replace(" ", "")


def size(value: float) -> str:
    return si(value, "B")


def flop(value: float) -> str:
    return si(value, "FLOP")


def seconds(value: float) -> str:
    if not value:
        return "0 s"
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} us"


def plural(number: int, word: str, words: str | None = None) -> str:
    """A count and its noun in the right number: plural(1, "microbatch", "microbatches") == "1 microbatch"."""
    return f"{number} {word if number == 1 else words or word + 's'}"


def percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8, 9] -> "0-3, 8-9" (duplicates count once)."""
    parts, start, previous = [], None, None
    for number in sorted(set(numbers)):
        if start is None:
            start = previous = number
        elif number == previous + 1:
            previous = number
        else:
            parts.append(_span(start, previous))
            start = previous = number
    if start is not None:
        parts.append(_span(start, previous))
    return ", ".join(parts)


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def signed(value: float, render) -> str:
    """A difference with its sign: +1.2 GB, -3 B, 0."""
    if not value:
        return "0"
    text = render(abs(value))
    return f"+{text}" if value > 0 else f"-{text}"
