"""The serving cost shown: report.md and `par cost` of a serving spec, and several side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from par.codegen.cost.render import RULES
from par.codegen.cost.report import Section
from par.codegen.cost.text import difference, format_section
from par.codegen.summary import mesh_line, model_line
from par.codegen.templating import render
from par.dsl import units
from par.dsl.cost.serving import DeviceLoad, PhaseCost, ServingCost
from par.dsl.escape import html_comment, markdown


def title(cost: ServingCost) -> str:
    return f"{cost.name} ({cost.attrs['source']})"


def summary(cost: ServingCost) -> list[str]:
    serve = cost.attrs["serve"]
    lines = [
        model_line(cost.attrs, drawing=False),
        mesh_line(cost.attrs, drawing=False),
        f"serving: {cost.sequences} sequences ({cost.per_microbatch} per microbatch), prompt {serve['prompt']} + "
        f"generate {serve['generate']} = context {serve['context']} tokens, KV cache in {serve['kv_dtype']}",
    ]
    hardware = cost.hardware
    if hardware is None:
        lines.append("hardware: none given, so no times and no memory-fit check (add `hardware h100` to the spec, or run par cost --hardware h100)")
    else:
        hbm = f"HBM {hardware.hbm_gbps:g} GB/s" if hardware.hbm_gbps else "no HBM bandwidth (hbm_gbps), so no memory time"
        lines.append(
            f"hardware: {hardware.name}: {hardware.peak_tflops:g} TFLOP/s peak at {hardware.efficiency:g} efficiency, {hbm}, "
            f"{hardware.memory_gb:g} GB per device, {hardware.devices_per_node} devices per node, "
            f"links {hardware.intra_gbps:g} GB/s + {hardware.intra_latency_us:g} us within a node, "
            f"{hardware.inter_gbps:g} GB/s + {hardware.inter_latency_us:g} us across nodes"
        )
    return lines


@dataclass(frozen=True, slots=True)
class Metric:
    """A row of the serving specs' side-by-side table: its label, value and format."""

    label: str
    value: Callable[[ServingCost], float | None]
    render: Callable[[float], str]


def _most(of: Callable[[ServingCost, DeviceLoad], float]) -> Callable[[ServingCost], float]:
    return lambda cost: max(of(cost, device) for device in cost.decode.devices)


def _timed(of: Callable[[ServingCost], float]) -> Callable[[ServingCost], float | None]:
    return lambda cost: of(cost) if cost.hardware is not None else None


def _per_second(value: float) -> str:
    return units.si(value, "tokens/s")


METRICS: tuple[Metric, ...] = (
    Metric("devices", lambda c: c.mesh.world, units.count),
    Metric("sequences served at once", lambda c: c.sequences, units.count),
    Metric("weights per device (max)", _most(lambda c, d: d.weight_bytes), units.size),
    Metric("KV cache per token per device (max)", _most(lambda c, d: c.kv_per_token(d)), units.size),
    Metric("KV cache per device at the context (max)", _most(lambda c, d: c.kv_bytes(d)), units.size),
    Metric("largest batch that fits", lambda c: c.largest_batch(), units.count),
    Metric("time to first token (TTFT)", _timed(lambda c: c.ttft_s()), units.seconds),
    Metric("time per output token (TPOT)", _timed(lambda c: c.tpot_s()), units.seconds),
    Metric("decode tokens/s, all devices", _timed(lambda c: c.tokens_per_s()), _per_second),
    Metric("decode tokens/s per device", _timed(lambda c: c.tokens_per_s() / c.mesh.world), _per_second),
    Metric("request: prompt to last token", _timed(lambda c: c.request_s()), units.seconds),
    Metric("pipeline decode bubble", _timed(lambda c: c.decode_bubble()), units.percent),
)


def _shown(value: float | None, render_value: Callable[[float], str]) -> str:
    return "-" if value is None else render_value(value)


def headline(cost: ServingCost) -> Section:
    rows = tuple((metric.label, _shown(metric.value(cost), metric.render)) for metric in METRICS)
    notes = (
        "KV cache: K and V of every layer a device holds, its heads, at the planned context (prompt + generate) for "
        "every sequence of its replica. The largest batch fills what the weights leave of the device's memory with "
        "sequences' caches at that context (activations, a few MB in decode, are left out).",
    )
    return Section("Serving", ("metric", "value"), rows, "lr", notes)


def roofline(cost: ServingCost) -> Section:
    """Per phase, the slowest device's microbatch: what bounds it."""
    rows = []
    hardware = cost.hardware
    balance = hardware.peak_tflops * 1e12 * hardware.efficiency / (hardware.hbm_gbps * 1e9) if hardware and hardware.hbm_gbps else None
    for phase in (cost.prefill, cost.decode):
        device = phase.slowest()
        intensity = device.flops / device.read_bytes if device.read_bytes else 0.0
        timed = hardware is not None
        rows.append(
            (
                phase.phase,
                f"gpu {device.rank}",
                units.flop(device.flops),
                units.size(device.read_bytes),
                f"{intensity:.4g}",
                units.seconds(device.compute_s) if timed else "-",
                units.seconds(device.memory_s) if timed else "-",
                f"{units.seconds(device.latency_s)} + {units.seconds(device.transfer_s)}" if timed else "-",
                units.seconds(device.time_s) if timed else "-",
                device.bound if timed else "-",
            )
        )
    notes = [
        "Per microbatch on the slowest device: compute = FLOPs / (peak × efficiency); memory = bytes read from HBM "
        "(weights, a lookup's rows, the KV cache: all of it in decode, what is written in the prefill) / hbm_gbps; "
        "collectives = α (ring steps × latency) + β (bytes sent / bandwidth). Compute and memory overlap, collectives "
        "do not: time = max(compute, memory) + collectives.",
    ]
    if balance is not None:
        notes.append(
            f"The device's balance point is {balance:.4g} FLOP per byte: a phase with a higher intensity is bound by compute, "
            "one below it by memory bandwidth (a decode step reads every weight for one token per sequence)."
        )
    headers = ("phase", "slowest", "FLOP", "bytes read", "FLOP/byte", "compute", "memory", "collectives (α + β)", "time", "bound by")
    return Section("Roofline per phase", headers, tuple(rows), "llrrrrrrrl", tuple(notes))


def stages(cost: ServingCost) -> Section:
    pp = cost.mesh.pp
    prefill, decode = cost.prefill.stage_times(pp), cost.decode.stage_times(pp)
    timed = cost.hardware is not None
    rows = tuple(
        (str(stage), units.seconds(prefill[stage]) if timed else "-", units.seconds(decode[stage]) if timed else "-", _bound(cost.decode, stage))
        for stage in range(pp)
    )
    microbatches = cost.mesh.microbatches
    notes = (
        f"TTFT = the sum of the stages' prefill + ({microbatches} - 1) × the slowest; a decode round = max(the sum of the "
        f"stages, {units.plural(microbatches, 'microbatch', 'microbatches')} × the slowest stage), which gives every sequence one token (TPOT); the stages "
        "idle for the rest of the round (the decode bubble).",
    )
    return Section("Per stage, one microbatch", ("stage", "prefill", "decode step", "decode bound by"), rows, "rrrl", notes)


def _bound(phase: PhaseCost, stage: int) -> str:
    devices = [device for device in phase.devices if device.stage == stage]
    slowest = max(devices, key=lambda device: device.time_s)
    return slowest.bound if slowest.time_s else "-"


def sections(cost: ServingCost) -> list[Section]:
    return [headline(cost), roofline(cost), stages(cost)]


def format_serving(cost: ServingCost) -> str:
    head = [title(cost), *summary(cost), *(f"WARNING: {line}" for line in cost.warnings)]
    return "\n\n".join(["\n".join(head), *(format_section(section) for section in sections(cost))]) + "\n"


def comparison(costs: Sequence[ServingCost]) -> Section:
    """The headline metrics side by side; each spec after the first with its difference from the first."""
    first = costs[0]
    headers = ["metric", first.name]
    for cost in costs[1:]:
        headers += [cost.name, f"vs {first.name}"]
    rows = []
    for metric in METRICS:
        values = [metric.value(cost) for cost in costs]
        row = [metric.label, _shown(values[0], metric.render)]
        for value in values[1:]:
            row += [_shown(value, metric.render), difference(values[0], value, metric.render)]
        rows.append(tuple(row))
    return Section("Side by side (serving)", tuple(headers), tuple(rows), "l" + "r" * (len(headers) - 1))


def format_serving_comparison(costs: Sequence[ServingCost]) -> str:
    parts = [format_serving(cost).rstrip("\n") for cost in costs]
    parts.append(format_section(comparison(costs)))
    return "\n\n".join(parts) + "\n"


def render_serving_report(cost: ServingCost) -> str:
    return render(
        "serving_report.md.jinja",
        name=markdown(cost.name),
        source=html_comment(cost.attrs["source"]),
        summary=summary(cost),
        warnings=list(cost.warnings),
        sections=[
            {
                "title": section.title,
                "headers": section.headers,
                "rules": [RULES[align] for align in section.align],
                "rows": [[cell.replace("|", "\\|") for cell in row] for row in section.rows],
                "notes": section.notes,
            }
            for section in sections(cost)
        ],
    )
