"""Snapshots of what `par lint` says about the corpus samples in tests/lint/corpus/, and where
the full corpus is (shared/corpus/dags next to the repository, or $PAR_CORPUS)."""

from __future__ import annotations

import os
from pathlib import Path

from par.lint import run_lint

HERE = Path(__file__).parent
REPO = HERE.parents[1]
CORPUS = HERE / "corpus"
SNAPSHOTS = HERE / "snapshots"


def full_corpus() -> Path | None:
    """The folder of all 32 corpus DAGs, or None where it is not next to this checkout."""
    for candidate in (os.environ.get("PAR_CORPUS"), REPO / "shared/corpus/dags",
                      REPO.parent / "shared/corpus/dags"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def samples() -> list[Path]:
    return sorted(CORPUS.glob("*.dot"))


def snapshot_path(sample: Path) -> Path:
    return SNAPSHOTS / (sample.name + ".txt")


def lint_sample(sample: Path) -> str:
    """The text report, with paths shown relative to the corpus folder."""
    text, _ = run_lint([str(sample)])
    return text.replace(str(sample.parent) + "/", "")
