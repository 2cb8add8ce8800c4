"""Gathering `name value` settings: each name known, each set once."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from par.dsl.checks.evaluate import did_you_mean
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.spec import Setting


def collect_settings(
    settings: Sequence[Setting], allowed: Collection[str], where: str, keywords: Collection[str] = ()
) -> tuple[dict[str, Setting], list[Diagnostic]]:
    """The settings by name, and an error for each unknown name and each repeated one.

    `keywords` are the block's items that have their own syntax (`stages [...]`, `sp`): never a
    `name value` setting, but named in the hint so it lists everything the block accepts.
    """
    found: dict[str, Setting] = {}
    diags: list[Diagnostic] = []
    known = sorted(set(allowed) | set(keywords))
    for setting in settings:
        if setting.name not in allowed:
            hint = did_you_mean(setting.name, known) or f"{where} settings are: {', '.join(known)}"
            diags.append(error(f"unknown {where} setting '{setting.name}'", setting.name_span, hint=hint))
        elif setting.name in found:
            first = found[setting.name].value.span
            diags.append(error(f"'{setting.name}' is set twice (first at {first})", setting.name_span))
        else:
            found[setting.name] = setting
    return found, diags
