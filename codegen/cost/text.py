"""Plain-text layout for the terminal: one deployment, or several side by side with differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from par.codegen.cost.report import Section, sections, summary, title, warnings
from par.dsl import units
from par.dsl.cost.accounting import KINDS
from par.dsl.cost.model import Cost
from par.dsl.lowering.placement import share


def table(section: Section) -> str:
    widths = [max(len(row[i]) for row in (section.headers, *section.rows)) for i in range(len(section.headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [cell.ljust(width) if align == "l" else cell.rjust(width) for cell, width, align in zip(cells, widths, section.align, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(section.headers), rule, *(line(row) for row in section.rows)])


def format_section(section: Section) -> str:
    parts = [section.title, "=" * len(section.title), table(section)]
    if section.notes:
        parts.append("\n".join(section.notes))
    return "\n".join(parts)


def format_cost(cost: Cost, *, brief: bool = False) -> str:
    """The whole report; `brief`: the summary, warnings and the per-device and memory tables."""
    head = [title(cost), *summary(cost)]
    head += [f"WARNING: {line}" for line in warnings(cost)]
    shown = sections(cost)[:2] if brief else sections(cost)
    return "\n\n".join(["\n".join(head), *(format_section(s) for s in shown)]) + "\n"


@dataclass(frozen=True, slots=True)
class Metric:
    """A row of the specs' side-by-side table: its label, value and format."""

    label: str
    value: Callable[[Cost], float | None]
    render: Callable[[float], str]
    hide_zero: bool = False  # left out when it is zero (or None) for every spec: a kind no spec sends


def _max(cost: Cost, of: Callable) -> float:
    return max(of(device) for device in cost.devices)


def _kind_max(kind: str) -> Callable[[Cost], float]:
    return lambda cost: _max(cost, lambda d: d.comm.get("forward", {}).get(kind, 0))


def _per_layer(of: Callable) -> Callable[[Cost], float]:
    """A number of the first device divided by its layers (every layer of a device is the same)."""

    def value(cost: Cost) -> float:
        device = cost.devices[0]
        return share(of(device), Fraction(1, max(len(device.layers), 1)))

    return value


def _step(cost: Cost) -> float | None:
    return cost.estimate.step if cost.hardware is not None else None


METRICS: tuple[Metric, ...] = (
    Metric("devices", lambda c: c.mesh["world"], units.count),
    Metric("distinct parameters", lambda c: c.model_params, units.count),
    Metric("params per device (max)", lambda c: _max(c, lambda d: d.params), units.count),
    Metric("peak memory per device (max)", lambda c: max(g.memory.total for g in c.groups), units.size),
    Metric("activations/mb per device (max)", lambda c: _max(c, lambda d: d.activation_bytes), units.size),
    Metric("FLOP fwd/mb per device (max)", lambda c: _max(c, lambda d: d.flops), units.flop),
    Metric("FLOP per step, all devices", lambda c: sum(c.step_flops(d) for d in c.devices), units.flop),
    Metric("FLOP fwd/mb per layer (gpu 0)", _per_layer(lambda d: d.flops), units.flop),
    Metric("FLOP recomputed per step, all devices", lambda c: sum(c.recompute_step_flops(d) for d in c.devices), units.flop, hide_zero=True),
    *(Metric(f"{kind} sent fwd/mb per device (max)", _kind_max(kind), units.size, hide_zero=True) for kind in KINDS),
    *(
        Metric(
            f"{kind} sent fwd/mb per layer (gpu 0)",
            _per_layer(lambda d, k=kind: d.comm.get("forward", {}).get(k, 0)),
            units.size,
            hide_zero=True,
        )
        for kind in KINDS
        if kind != "send"
    ),
    Metric("bytes sent per step, all devices", lambda c: sum(c.step_comm(d) for d in c.devices), units.size),
    Metric("pipeline bubble", lambda c: c.estimate.bubble, units.percent),
    Metric("step time (estimate)", _step, units.seconds),
)


def comparison(costs: Sequence[Cost]) -> Section:
    """Metrics side by side; each spec after the first with its difference from the first."""
    first = costs[0]
    headers = ["metric", first.name]
    for cost in costs[1:]:
        headers += [cost.name, f"vs {first.name}"]
    rows = []
    for metric in METRICS:
        values = [metric.value(cost) for cost in costs]
        if metric.hide_zero and all(not value for value in values):
            continue
        row = [metric.label, _show(values[0], metric)]
        for value in values[1:]:
            row += [_show(value, metric), difference(values[0], value, metric.render)]
        rows.append(tuple(row))
    return Section("Side by side", tuple(headers), tuple(rows), "l" + "r" * (len(headers) - 1))


def _show(value: float | None, metric: Metric) -> str:
    return "-" if value is None else metric.render(value)


def difference(base: float | None, value: float | None, render: Callable[[float], str]) -> str:
    """`+1.2 GB (+12.0%)`; percentages need a non-zero base."""
    if base is None or value is None:
        return "-"
    delta = value - base
    if not delta:
        return "same"
    if render is units.percent:
        return f"{'+' if delta > 0 else '-'}{abs(delta) * 100:.1f} points"
    text = units.signed(delta, render)
    return f"{text} ({delta / base * 100:+.1f}%)" if base else f"{text} (new)"


def format_comparison(costs: Sequence[Cost]) -> str:
    """Each spec in brief, then the side-by-side table."""
    parts = [format_cost(cost, brief=True).rstrip("\n") for cost in costs]
    parts.append(format_section(comparison(costs)))
    parts.append("par cost SPEC prints every table of one spec: bytes by kind, one layer node by node, the pipeline.")
    return "\n\n".join(parts) + "\n"
