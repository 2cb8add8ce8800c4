"""The view-model of a cost report: titled tables of strings, shared by `par cost` and report.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from par.codegen.summary import mesh_line, model_line
from par.dsl import units
from par.dsl.cost.accounting import KINDS, PHASES, RankCost, step_kinds
from par.dsl.cost.estimate import Memory, capacity, fits
from par.dsl.cost.model import Cost, DeviceGroup
from par.dsl.dag.types import graph_attrs


@dataclass(frozen=True, slots=True)
class Section:
    """A table of report.md, with the notes under it."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: str  # one letter per column: l (left) or r (right)
    notes: tuple[str, ...] = field(default=())


def title(cost: Cost) -> str:
    return f"{cost.name} ({graph_attrs(cost.graph)['source']})"


def summary(cost: Cost) -> list[str]:
    lines = [model_line(graph_attrs(cost.graph), drawing=False), mesh_line(graph_attrs(cost.graph), drawing=False)]
    hardware = cost.hardware
    if hardware is None:
        lines.append("hardware: none given, so no step time and no memory-fit check (add `hardware h100` to the spec, or run par cost --hardware h100)")
    else:
        lines.append(
            f"hardware: {hardware.name}: {hardware.peak_tflops:g} TFLOP/s peak at {hardware.efficiency:g} efficiency, "
            f"{hardware.memory_gb:g} GB per device, {hardware.devices_per_node} devices per node, "
            f"links {hardware.intra_gbps:g} GB/s + {hardware.intra_latency_us:g} us within a node, "
            f"{hardware.inter_gbps:g} GB/s + {hardware.inter_latency_us:g} us across nodes"
        )
    return lines


def warnings(cost: Cost) -> list[str]:
    """One line per group of devices that does not fit in the hardware's memory, with the numbers."""
    found = []
    for group in cost.too_big():
        assert cost.hardware is not None  # only hardware makes a group too big
        memory = group.memory
        found.append(
            f"{_devices(group)} (stage {group.cost.stage}) does not fit: it needs {units.size(memory.total)} "
            f"(weights {units.size(memory.weights)} + grads {units.size(memory.grads)} + master "
            f"{units.size(memory.master)} + optimizer "
            f"{units.size(memory.optimizer)} + activations {in_flight(memory)} x "
            f"{units.size(memory.activations_per_microbatch)}"
            + (f" + rerun {units.size(memory.rerun)}" if memory.rerun else "")
            + f") but {cost.hardware.name} has "
            f"{cost.hardware.memory_gb:g} GB per device"
        )
    return found


def sections(cost: Cost) -> list[Section]:
    found = [_devices_section(cost), _memory_section(cost), _comm_section(cost), _layer_section(cost)]
    if cost.experts is not None:
        found += _expert_sections(cost)
    if cost.context is not None:
        found.append(_context_section(cost))
    found.append(_pipeline_section(cost))
    if cost.hardware is not None:
        found.append(_step_section(cost))
    found.append(_totals_section(cost))
    return found


def _expert_sections(cost: Cost) -> list[Section]:
    """The experts' numbers and, where the first layer shown is dense, an MoE layer beside it."""
    experts = cost.experts
    assert experts is not None
    settings = experts.settings
    rows = (
        ("routed experts per MoE layer, each token to", f"{settings['experts']}, top {settings['top_k']}"),
        ("shared experts", str(settings["shared_experts"])),
        ("router", f"{settings['router']}{', top-k weights renormalised' if settings['router_norm'] else ''}"),
        ("expert ffn", f"{settings['expert_ffn']:,}"),
        ("expert-parallel group, local experts per device", f"ep {experts.ep}, {experts.local_experts}"),
        ("MoE layers, dense layers", f"{experts.moe_layers}, {experts.dense_layers}"),
        ("routed expert parameters, all experts", units.count(experts.routed_params)),
        ("parameters active per token", units.count(experts.active_params)),
        ("dispatch + combine sent fwd/mb (busiest device), balanced", units.size(experts.routing_bytes)),
        (f"the same at capacity factor {settings['capacity_factor']:g} (worst case)", units.size(experts.routing_worst)),
        ("routed tokens kept for backward per mb (busiest device), balanced", units.size(experts.routed_activations)),
        (f"the same at capacity factor {settings['capacity_factor']:g} (worst case)", units.size(experts.routed_activations_worst)),
    )
    found = [
        Section(
            "Mixture of experts",
            ("quantity", "value"),
            rows,
            "lr",
            (
                "Balanced routing: each expert gets tokens × top_k / experts tokens of a microbatch; the worst case lets "
                "each get capacity_factor times that, a rank sending at most all the tokens it holds. Active "
                "parameters: the model's, less the routed experts a token skips (experts - top_k of each MoE layer). "
                "Routed tokens kept: the dispatched tokens and the experts' tensors autograd keeps, part of the "
                "activations above; the memory table counts them balanced. "
                "The DAG holds the layers: embeddings and the head are not counted.",
            ),
        )
    ]
    shown = cost.groups[0].cost.layers[:1]
    first_moe = _first_routed_layer(cost)
    if first_moe is not None and shown and first_moe[1] != shown[0]:
        found.append(_layer_section(cost, at=first_moe))
    return found


def _context_section(cost: Cost) -> Section:
    """The ring of context parallelism: its steps, what each passes on and whether compute hides it."""
    context = cost.context
    assert context is not None
    show = time_format(cost)
    cp, ring = context.cp, context.algorithm == "ring"
    step = "ring step" if ring else "attention"
    rows = [
        ("context-parallel group, algorithm", f"cp {cp}, {context.algorithm}"),
        ("tokens of a sequence per device", f"{context.tokens:,} (chunks c and {2 * cp - 1} − c of {2 * cp})"),
        ("attention FLOPs per layer per device, fwd/mb", units.flop(context.attention_flops)),
        (f"FLOPs of one {step}", units.flop(context.step_flops) + (f" ({cp} steps per layer)" if ring else "")),
        ("bytes each device sends per ring step" if ring else "bytes each device sends per AllGather", units.size(context.step_bytes)),
    ]
    if cost.hardware is not None:
        rows += [(f"time of one {step}", show(context.step_compute))]
        if ring:
            hidden = "yes" if context.hidden else f"no: {show(context.exposed)} exposed per step"
            rows += [("time of one transfer", show(context.step_transfer)), ("transfer hidden by the step's compute", hidden)]
        else:
            rows += [("time of the AllGather (not overlapped)", show(context.step_transfer))]
    notes = (
        f"Each device holds 2 of the {2 * cp} chunks of every sequence, c and {2 * cp - 1} − c, so the causal work is the same on "
        f"every device: half of each step's score matrix. Cut into {cp} contiguous parts instead, the last device would do "
        f"{float(context.unbalanced):.2f} times the average. FLOPs count the whole score matrix, as for attention without cp. "
        + (
            "A ring step attends to the block a device holds while it passes that block on: the transfer is hidden when the step "
            "takes longer; the estimate counts only the rest. In backward the blocks travel again and their gradients (dK, dV) come back."
            if ring
            else "The AllGather runs before the attention; in backward a ReduceScatter returns the gradients of the keys and values."
        ),
    )
    return Section("Context parallelism", ("quantity", "value"), tuple(rows), "lr", notes)


def _first_routed_layer(cost: Cost) -> tuple[int, int] | None:
    """(rank, layer) of the first layer with routed experts, on the first rank that runs it."""
    found = [
        (layer, data["devices"][0])
        for _, data in cost.graph.nodes(data=True)
        if (layer := data["layer"]) is not None and data["kind"] == "compute" and data.get("in_placement", "").startswith("E(")
    ]
    if not found:
        return None
    layer, rank = min(found)
    return rank, layer


def _devices(group: DeviceGroup) -> str:
    return f"gpu {units.strided_ranges(group.ranks)}"


def _layers(cost: RankCost) -> str:
    return units.ranges(cost.layers) or "-"


def _sent(cost: RankCost, phase: str) -> float:
    return sum(cost.comm.get(phase, {}).values())


def _device_numbers(cost: Cost, devices: Sequence[RankCost]) -> tuple[str, ...]:
    """The number columns of the per-device table, summed over `devices`."""
    return (
        units.count(sum(d.params for d in devices)),
        units.flop(sum(d.flops for d in devices)),
        units.size(sum(d.activation_bytes for d in devices)),
        units.size(sum(_sent(d, "forward") for d in devices)),
        units.size(sum(cost.step_comm(d) for d in devices)),
    )


def _devices_section(cost: Cost) -> Section:
    rows = [(_devices(group), str(group.cost.stage), _layers(group.cost), *_device_numbers(cost, [group.cost])) for group in cost.groups]
    rows.append((f"all {units.plural(len(cost.devices), 'device')}", "", "", *_device_numbers(cost, cost.devices)))
    return Section(
        "Per device",
        ("devices", "stage", "layers", "params", "FLOP fwd/mb", "activations/mb", "sent fwd/mb", "sent/step"),
        tuple(rows),
        "lllrrrrr",
        (
            "/mb: the forward pass of one microbatch, as in the DAG. /step: a training step, "
            f"{units.plural(cost.mesh['microbatches'], 'microbatch', 'microbatches')} forward and backward "
            "plus the gradient sync.",
        ),
    )


def _memory_section(cost: Cost) -> Section:
    hardware = cost.hardware
    rerun = cost.recompute != "none"
    rows: list[tuple[str, ...]] = []
    for group in cost.groups:
        memory = group.memory
        row: tuple[str, ...] = (
            _devices(group),
            units.size(memory.weights),
            units.size(memory.grads),
            units.size(memory.master),
            units.size(memory.optimizer),
            units.size(memory.activations_per_microbatch),
            in_flight(memory),
            units.size(memory.activations),
            *((units.size(memory.rerun),) if rerun else ()),
            units.size(memory.total),
        )
        if hardware is not None:
            verdict = "yes" if fits(memory, hardware) else "NO"
            row += (f"{verdict} ({units.percent(memory.total / capacity(hardware))} of {hardware.memory_gb:g} GB)",)
        rows.append(row)
    state = cost.state
    master = f" + master weights {state.master} B" if state.master else ""
    headers = ("devices", "weights", "grads", "master", "optimizer", "activations/mb", "in flight", "activations", *(("rerun",) if rerun else ()), "peak")
    notes: tuple[str, ...] = (
        f"Per parameter: weights {state.weights} B ({cost.model['dtype']}) + grads {state.grads} B{master} "
        f"+ Adam m and v {state.optimizer} B = {state.total} B, all but the weights in fp32.",
        f"In flight: microbatches whose activations a stage holds at once under {cost.mesh['schedule']} "
        "(GPipe: m; 1F1B: min(p - stage, m)).",
    )
    if rerun:
        notes += (f"Rerun (recompute {cost.mesh['recompute']}): what the backward's rerun of one layer holds at once while that layer's backward runs.",)
    return Section(
        "Memory per device (peak during a step)",
        headers + (("fits",) if hardware else ()),
        tuple(rows),
        "l" + "r" * (len(headers) - 1) + ("l" if hardware else ""),
        notes + _zero_note(cost.mesh.get("zero", 0)),
    )


ZERO_SHARDS = ("the master weights and Adam's m and v", "the gradients, master weights and Adam's m and v", "the weights, gradients, master weights and Adam's m and v")


ZERO_SYNC = (
    ".",
    "; at zero 2 the ReduceScatter runs in each microbatch's backward, per op with parameters.",
    "; at zero 3 per layer, each microbatch: an AllGather of its weights in forward and in backward and a ReduceScatter of its gradients.",
)


def _zero_note(zero: int) -> tuple[str, ...]:
    if not zero:
        return ()
    return (f"zero {zero}: each device keeps its 1/n share of {ZERO_SHARDS[zero - 1]}, n the ranks that reduce its gradients (dp x cp; an expert's: those holding the same experts).",)


def _comm_section(cost: Cost) -> Section:
    rows = []
    for group in cost.groups:
        comm = group.cost.comm
        step = step_kinds(comm, microbatches=cost.mesh["microbatches"])
        for kind in KINDS:
            if not step.get(kind):
                continue
            sent = [comm.get(phase, {}).get(kind, 0) for phase in PHASES]
            rows.append((_devices(group), kind, *(units.size(value) for value in sent), units.size(step[kind])))
    if not rows:
        rows.append(("all", "none", "0 B", "0 B", "0 B", "0 B"))
    notes: tuple[str, ...] = (
        "Ring collectives: each rank sends 2(n-1)/n of the tensor for an AllReduce, (n-1)/n for an "
        "AllGather or ReduceScatter, (n-1)/n^2 for an AllToAll; a pipeline send is the local tensor.",
        "Backward: AllGather <-> ReduceScatter, AllToAll <-> AllToAll, AllReduce <-> nothing, "
        "send <-> send back; a replicated value entering a column-parallel linear (not from an AllGather) "
        "is AllReduced. Gradients: AllReduce over the data-parallel group; over the tensor-parallel "
        "group for parameters of ops on sequence shards.",
    )
    if cost.mesh.get("zero", 0):
        notes += (
            "ZeRO: the data-parallel AllReduce is a ReduceScatter of the gradients and an AllGather of the updated "
            "weights" + ZERO_SYNC[cost.mesh["zero"] - 1],
        )
    elided = sorted({data["name"] for _, data in cost.graph.nodes(data=True) if data.get("backward_reason")})
    if elided:
        notes += (
            f"No ReduceScatter in backward for {', '.join(elided)} (every layer): each rank reads only its own "
            "part of the gathered tensor, so the gradient is zero elsewhere and the backward keeps that part "
            "(par explain on the node says why).",
        )
    return Section(
        "Bytes sent per device",
        ("devices", "kind", "forward/mb", "backward/mb", "gradients/step", "step"),
        tuple(rows),
        "llrrrr",
        notes,
    )


def _layer_section(cost: Cost, at: tuple[int, int] | None = None) -> Section:
    """The nodes of one layer on one device: the first device's first layer, or `at` (rank, layer)."""
    graph = cost.graph
    first = cost.groups[0]
    rank, layer = at or (first.ranks[0], (first.cost.layers or (None,))[0])
    sent: dict[tuple[str, str], float] = {}
    for item in cost.transfers:
        if item.node is not None and rank in item.senders and item.phase != "gradients":
            sent[(item.phase, item.node)] = sent.get((item.phase, item.node), 0) + item.bytes
    rows: list[tuple[str, ...]] = []
    totals: list[int | float] = [0, 0, 0, 0]
    for node, data in graph.nodes(data=True):
        if data["layer"] != layer or rank not in data["devices"]:
            continue
        values = (data["flops"], data["params"], sent.get(("forward", node), 0), sent.get(("backward", node), 0))
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        placement = f"{data['in_placement']} -> {data['out_placement']}" if "in_placement" in data else ""
        rows.append((node, data["op"], placement, str(list(data["out_shape"])), f"{values[0]:,}", f"{values[1]:,}", f"{values[2]:,}", f"{values[3]:,}"))
    rows.append(("layer total", "", "", "", *(f"{value:,}" for value in totals)))
    return Section(
        f"Layer {layer} on gpu {rank}, one microbatch (from the DAG)",
        ("node", "op", "placement", "output (local)", "FLOP fwd", "params", "sent fwd (B)", "sent bwd (B)"),
        tuple(rows),
        "llllrrrr",
        (f"{_same_layers(cost)}; FLOPs count a multiply-add as 2.",),
    )


def _same_layers(cost: Cost) -> str:
    mixed = cost.experts is not None and cost.experts.dense_layers and cost.experts.moe_layers
    return "Every layer of the same block is the same" if mixed else "Every layer of a stage is the same"


def time_format(cost: Cost) -> Callable[[float], str]:
    return units.seconds if cost.estimate.unit == "s" else units.flop


def in_flight(memory: Memory) -> str:
    """Microbatches of activations held at once: a whole number, or interleaved a fraction (chunks held / chunks)."""
    held = memory.in_flight
    return str(held) if isinstance(held, int) or held.denominator == 1 else f"{float(held):.3g}"


def _pipeline_section(cost: Cost) -> Section:
    estimate, mesh = cost.estimate, cost.mesh
    stages, m, chunks = mesh["pp"], mesh["microbatches"], mesh.get("chunks", 1)
    at = time_format(cost)
    rows = []
    # Interleaved, a stage's time per microbatch is the sum of its model chunks'.
    forward = [sum(estimate.stages.forward[stage::stages]) for stage in range(stages)]
    backward = [sum(estimate.stages.backward[stage::stages]) for stage in range(stages)]
    for stage in range(stages):
        group = next(g for g in cost.groups if g.cost.stage == stage)
        rows.append((str(stage), _layers(group.cost), at(forward[stage]), at(backward[stage]), in_flight(group.memory)))
    mean = sum(forward) / len(forward)
    closed = cost.closed_form_bubble
    if chunks > 1:
        closed_form = (
            f"closed form for equal chunks (p-1)/(v·m+p-1) = ({stages}-1)/({chunks}·{m}+{stages}-1) = "
            f"{closed.numerator}/{closed.denominator} = {units.percent(float(closed))}, that is (p-1)/(v·m) = "
            f"{units.percent((stages - 1) / (chunks * m))} of the ideal time (Narayanan et al. 2021), "
            f"v = {chunks} times less than 1F1B's."
        )
    else:
        closed_form = (
            f"closed form for equal stages (p-1)/(m+p-1) = ({stages}-1)/({m}+{stages}-1) = {closed.numerator}/{closed.denominator} = "
            f"{units.percent(float(closed))}, the same for GPipe and 1F1B."
        )
    notes = [
        f"Bubble: {units.percent(estimate.bubble)} of device time is idle (idle / (stages x pipeline time), "
        f"simulated {mesh['schedule']} with the stage times above); {closed_form}",
        f"Stage imbalance: slowest stage forward / mean = {max(forward) / mean if mean else 1:.3f}.",
    ]
    if chunks > 1:
        notes.insert(
            0,
            f"Interleaved: {chunks} model chunks per stage, chunk k on stage k mod {stages}; a microbatch crosses "
            f"{stages * chunks - 1} stage boundaries. In flight counts chunks held / {chunks}: "
            f"stage 0 holds the most (Korthikanti et al. 2022: p·(1 + (p-1)/(p·v)) microbatches while m·v allows).",
        )
    if estimate.unit != "s":
        notes.append("Times in FLOPs of the slowest device, its ops one after another (no hardware given: communication is not timed).")
    else:
        again = " + the forward it recomputes (and its collectives)" if cost.recompute != "none" else ""
        notes.append(f"Times: the stage's slowest device, its ops and collectives one after another; backward = 2 x compute{again} + backward collectives.")
    return Section(
        "Pipeline",
        ("stage", "layers", "forward/mb", "backward/mb", "in flight"),
        tuple(rows),
        "llrrr",
        tuple(notes),
    )


def _step_section(cost: Cost) -> Section:
    estimate, hardware, mesh = cost.estimate, cost.hardware, cost.mesh
    assert hardware is not None  # the estimate section is written only with hardware
    flops = sum(cost.step_flops(device) for device in cost.devices)
    run = cost.run_flops()
    peak = mesh["world"] * hardware.peak_tflops * 1e12
    tokens = cost.model["batch"] * cost.model["seq"]
    again = " (recomputation included, as Megatron-LM counts)" if cost.recompute != "none" else ""
    rows = (
        ("one microbatch forward, every stage and link in turn", units.seconds(estimate.microbatch_latency)),
        (f"pipeline: {units.plural(mesh['microbatches'], 'microbatch', 'microbatches')} forward and backward", units.seconds(estimate.pipeline)),
        ("gradient sync after the pipeline (slowest device)", units.seconds(estimate.gradient_sync)),
        ("step", units.seconds(estimate.step)),
        ("counted FLOP/s / peak FLOP/s, all devices", units.percent(flops / (estimate.step * peak))),
        (f"FLOP/s per device{again}", units.si(run / (estimate.step * mesh["world"]), "FLOP/s")),
        ("tokens per second", units.count(tokens / estimate.step)),
    )
    return Section(
        f"Step time estimate ({hardware.name})",
        ("quantity", "time"),
        rows,
        "lr",
        (
            "Compute: FLOPs / (peak x efficiency). A collective: ring steps x latency + bytes sent / bandwidth "
            "(2(n-1) steps for an AllReduce, n-1 for the others; a send is 1), intra-node links when the whole "
            "group is in one node. No overlap of compute and communication.",
        ),
    )


def _totals_section(cost: Cost) -> Section:
    devices = cost.devices
    recompute = cost.recompute
    again = (
        ((f"forward FLOP run again in backward per step (recompute {recompute}), all devices", units.flop(sum(cost.recompute_step_flops(d) for d in devices))),)
        if recompute != "none"
        else ()
    )
    rows = (
        ("distinct parameters of the model", units.count(cost.model_params)),
        ("parameters held, all devices (with copies)", units.count(sum(d.params for d in devices))),
        ("FLOP per step, all devices", units.flop(sum(cost.step_flops(d) for d in devices))),
        *again,
        ("bytes sent per step, all devices", units.size(sum(cost.step_comm(d) for d in devices))),
    )
    kept = {
        "none": "no recomputation, no activation checkpointing",
        "selective": "recompute selective: each attention core runs again in backward and keeps only its input",
        "full": "recompute full: each layer runs again in backward and keeps only its input",
    }[recompute]
    return Section(
        "Totals",
        ("quantity", "value"),
        rows,
        "lr",
        (
            (
                "The DAG holds the whole model: the embedding on the first stage, the final norm, the head and the loss on the last."
                if cost.model.get("vocab")
                else "The model has no vocabulary: the DAG holds the transformer layers only (no embedding, head or loss)."
            ),
            "Activations: the tensors the generated code keeps for backward (what autograd saves for each op, "
            f"each tensor once, and the stage output a sending stage holds); {kept}; "
            "fused attention keeps a logsumexp, no seq x seq score matrix. Backward FLOPs = 2 x forward"
            + (", plus the forward FLOPs run again." if recompute != "none" else "."),
        ),
    )
