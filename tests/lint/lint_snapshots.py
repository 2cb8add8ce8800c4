"""Snapshots of what `par lint` says about the corpus samples in tests/lint/corpus/."""

from __future__ import annotations

from pathlib import Path

from dsl.lint import run_lint

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
SNAPSHOTS = HERE / "snapshots"


def samples() -> list[Path]:
    return sorted(CORPUS.glob("*.dot"))


def snapshot_path(sample: Path) -> Path:
    return SNAPSHOTS / (sample.name + ".txt")


def lint_sample(sample: Path) -> str:
    """The text report, with paths shown relative to the corpus folder."""
    text, _ = run_lint([str(sample)])
    return text.replace(str(sample.parent) + "/", "")
