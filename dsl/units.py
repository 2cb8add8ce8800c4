"""Numbers as people read them: decimal SI prefixes, fixed precision, rank ranges.

Shared by every printed or drawn output: reports, drawings, lint findings, `par explain`.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def exact(value: float) -> str:
    """A float as Python and the spec language read it back exactly, the exponent without a
    leading zero: exact(1e-05) == "1e-5"."""
    return repr(float(value)).replace("e-0", "e-").replace("e+0", "e+")


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


def ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8, 9] -> "0-3, 8-9" (duplicates count once)."""
    return ", ".join(span(first, last) for first, last in _runs(numbers))


_STRIDED_AFTER = 4  # up to this many runs are always listed in full


def strided_ranges(numbers: Iterable[int]) -> str:
    """ranges(), but a long regular pattern (runs of one length at one stride) keeps its first two
    runs and its last: the 128 data-parallel copies of stage 0 at tp 8 x pp 16 read
    "0-7, 128-135, ..., 16256-16263", not 128 runs. Any other pattern is spelled out."""
    runs = _runs(numbers)
    if len(runs) > _STRIDED_AFTER:
        first, second, last = runs[0], runs[1], runs[-1]
        length, stride = first[1] - first[0], second[0] - first[0]
        regular = all(b - a == length and a - first[0] == i * stride for i, (a, b) in enumerate(runs))
        if regular:
            return f"{span(*first)}, {span(*second)}, ..., {span(*last)}"
    return ", ".join(span(first, last) for first, last in runs)


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive numbers, as (first, last) pairs in order."""
    runs: list[tuple[int, int]] = []
    for number in sorted(set(numbers)):
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def span(first: int, last: int) -> str:
    """One run: "3" or "3-7"."""
    return str(first) if first == last else f"{first}-{last}"


def signed(value: float, render) -> str:
    """A difference with its sign: +1.2 GB, -3 B, 0."""
    if not value:
        return "0"
    text = render(abs(value))
    return f"+{text}" if value > 0 else f"-{text}"
