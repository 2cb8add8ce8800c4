"""Rewrite tests/lint/snapshots/ from the current linter: `python tests/lint/regen_snapshots.py`.

Review every change before committing it: a snapshot holds only findings a careful reviewer
agrees with. A false positive is a bug in a rule, not something to snapshot.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lint_snapshots import SNAPSHOTS, lint_sample, samples, snapshot_path  # noqa: E402


def main() -> None:
    SNAPSHOTS.mkdir(exist_ok=True)
    for sample in samples():
        path = snapshot_path(sample)
        text = lint_sample(sample)
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if text != old:
            path.write_text(text, encoding="utf-8")
            print(f"{'updated' if old is not None else 'created'} {path}")


if __name__ == "__main__":
    main()
