"""The rotary embedding's settings (`rope_*`): which scaling reads which numbers, as
transformers' rope init functions do."""

from __future__ import annotations

from collections.abc import Mapping

from par.dsl.checks.deployment import ROPE_SCALINGS, Rope
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span

# The rope's settings that take any positive number; ORIGINAL_MAX_POSITIONS takes a whole one
# (checked with the model's ranges).
REALS = ("rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")
ORIGINAL_MAX_POSITIONS = "rope_original_max_positions"
# What each scaling reads beside rope_theta (transformers: `_compute_linear_scaling_rope_parameters`,
# `_compute_llama3_parameters`).
NEEDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "linear": ("rope_factor",),
    "llama3": ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", ORIGINAL_MAX_POSITIONS),
}
SCALED = tuple(dict.fromkeys(name for names in NEEDS.values() for name in names))
assert set(NEEDS) == set(ROPE_SCALINGS)


def rope_settings(
    scaling: str, numbers: Mapping[str, float | int], spans: Mapping[str, Span], scaling_span: Span
) -> tuple[Rope | None, list[Diagnostic]]:
    """The rope from the spec's `rope_*` numbers (those it sets, evaluated) and its scaling:
    every number the scaling reads must be set, and none it does not read."""
    diags: list[Diagnostic] = []
    needed = NEEDS[scaling]
    for name in SCALED:
        if name in numbers and name not in needed:
            readers = " or ".join(kind for kind, names in NEEDS.items() if name in names)
            hint = f"set rope_scaling {readers}, or remove {name}"
            diags.append(error(f"{name} applies to rope_scaling {readers}; rope_scaling is {scaling}", spans[name], hint=hint))
    missing = [name for name in needed if name not in numbers]
    if missing:
        diags.append(error(f"rope_scaling {scaling} needs {', '.join(missing)}", scaling_span, hint="set them in the model"))
    low, high = numbers.get("rope_low_freq_factor"), numbers.get("rope_high_freq_factor")
    if scaling == "llama3" and low is not None and high is not None and high <= low:
        message = f"rope_high_freq_factor ({high:g}) must be above rope_low_freq_factor ({low:g}): llama3 scaling interpolates between them"
        diags.append(error(message, spans["rope_high_freq_factor"]))
    if diags:
        return None, diags
    defaults = Rope()
    return (
        Rope(
            theta=float(numbers.get("rope_theta", defaults.theta)),
            scaling=scaling,
            factor=float(numbers.get("rope_factor", defaults.factor)),
            low_freq_factor=float(numbers.get("rope_low_freq_factor", defaults.low_freq_factor)),
            high_freq_factor=float(numbers.get("rope_high_freq_factor", defaults.high_freq_factor)),
            original_max_positions=int(numbers.get(ORIGINAL_MAX_POSITIONS, defaults.original_max_positions)),
        ),
        diags,
    )
