"""How layers split into pipeline stages: a pure function, so it can be tested on its own."""

from __future__ import annotations


def even_counts(layers: int, pp: int) -> list[int]:
    """Layers per stage, as even as can be: the first `layers % pp` stages get one layer more."""
    base, extra = divmod(layers, pp)
    return [base + (1 if stage < extra else 0) for stage in range(pp)]


def even_split(layers: int, pp: int) -> tuple[tuple[int, int], ...]:
    """Contiguous (first, last) layer ranges of `even_counts`.

    No layer is ever dropped: the ranges cover 0..layers-1 exactly once. Needs 1 <= pp <= layers.
    """
    return from_counts(even_counts(layers, pp))


def from_counts(counts: list[int]) -> tuple[tuple[int, int], ...]:
    """Contiguous (first, last) layer ranges holding `counts` layers each."""
    ranges, first = [], 0
    for count in counts:
        ranges.append((first, first + count - 1))
        first += count
    return tuple(ranges)


def coverage_problems(ranges: list[tuple[int, int]], layers: int) -> list[str]:
    """Every way explicit ranges fail to place each layer on exactly one stage, in words."""
    problems = []
    owners: dict[int, list[int]] = {}
    for stage, (first, last) in enumerate(ranges):
        if first > last:
            problems.append(f"stage {stage} range {first}..{last} is empty (first > last)")
            continue
        for layer in range(max(first, 0), min(last, layers - 1) + 1):
            owners.setdefault(layer, []).append(stage)
        if first < 0 or last >= layers:
            problems.append(f"stage {stage} range {first}..{last} goes outside layers 0..{layers - 1}")
    missing = [layer for layer in range(layers) if layer not in owners]
    if missing:
        problems.append(f"{_layers(missing)} on no stage")
    for layer, stages in sorted(owners.items()):
        if len(stages) > 1:
            problems.append(f"layer {layer} is on stages {' and '.join(map(str, stages))}")
    if not problems:
        for stage in range(1, len(ranges)):
            if ranges[stage][0] != ranges[stage - 1][1] + 1:
                problems.append(f"stage {stage} does not start where stage {stage - 1} ends")
    return problems


def _layers(numbers: list[int]) -> str:
    runs: list[str] = []
    start: int | None = numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            runs.append(str(start) if start == prev else f"{start}..{prev}")
            start = cur
    noun = "layer" if len(numbers) == 1 else "layers"
    verb = "is" if len(numbers) == 1 else "are"
    return f"{noun} {', '.join(runs)} {verb}"
