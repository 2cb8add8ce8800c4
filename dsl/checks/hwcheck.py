"""Resolve a `hardware` section: a built-in profile, settings of its own, or both."""

from __future__ import annotations

from par.dsl.checks.deployment import Hardware
from par.dsl.checks.evaluate import AlreadyReported, EvalError, Namespace, did_you_mean
from par.dsl.checks.hardware import OPTIONAL, PROFILES, SETTINGS
from par.dsl.checks.settings import collect_settings
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.spec import HardwareDecl


def resolve_hardware(decl: HardwareDecl, diags: list[Diagnostic]) -> Hardware | None:
    values: dict[str, float] = {}
    if decl.profile is not None:
        if decl.profile not in PROFILES:
            hint = did_you_mean(decl.profile, PROFILES) or f"built-in profiles: {', '.join(sorted(PROFILES))}"
            diags.append(error(f"unknown hardware profile '{decl.profile}'", decl.profile_span, hint=hint))
            return None
        values.update(PROFILES[decl.profile])
    exprs, problems = collect_settings(decl.settings, SETTINGS, "hardware")
    diags += problems
    ok = not problems
    namespace = Namespace({name: s.value for name, s in exprs.items()})
    for name, setting in exprs.items():
        try:
            value = float(namespace.get(name))
        except EvalError as exc:
            diags.append(exc.diagnostic)
            ok = False
            continue
        except AlreadyReported:
            ok = False
            continue
        if value <= 0 or (name == "efficiency" and value > 1):
            limit = "between 0 and 1" if name == "efficiency" else "positive"
            diags.append(error(f"{name} must be {limit}, not {value:g}", setting.value.span))
            ok = False
        elif name == "devices_per_node" and not value.is_integer():
            diags.append(error(f"devices_per_node must be a whole number, not {value:g}", setting.value.span))
            ok = False
        values[name] = value
    missing = [name for name in SETTINGS if name not in values and name not in OPTIONAL]
    if missing and ok:
        diags.append(
            error(
                f"hardware does not set {', '.join(missing)}",
                decl.span,
                hint=f"start from a built-in profile ({', '.join(sorted(PROFILES))}): hardware h100 {{ ... }}",
            )
        )
        return None
    if not ok:
        return None
    return _hardware(decl.profile or "custom", values)


def builtin_hardware(name: str) -> Hardware | None:
    """A built-in profile as it stands, or None when there is no profile of that name."""
    if name not in PROFILES:
        return None
    return _hardware(name, PROFILES[name])


def _hardware(name: str, values: dict[str, float]) -> Hardware:
    return Hardware(
        name=name,
        peak_tflops=values["peak_tflops"],
        efficiency=values["efficiency"],
        memory_gb=values["memory_gb"],
        devices_per_node=int(values["devices_per_node"]),
        intra_gbps=values["intra_gbps"],
        intra_latency_us=values["intra_latency_us"],
        inter_gbps=values["inter_gbps"],
        inter_latency_us=values["inter_latency_us"],
        hbm_gbps=values.get("hbm_gbps"),
    )
