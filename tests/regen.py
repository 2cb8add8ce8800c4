"""Rewrite every snapshot the tests compare against: `python tests/regen.py`.

In turn: the golden artifacts (tests/golden/regen.py), the error snapshots
(tests/errors/regen.py) and the lint snapshots (tests/lint/regen_snapshots.py). Each can still
be run alone. Review the diff before committing: a snapshot is a promise about what users get.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("tests/golden/regen.py", "tests/errors/regen.py", "tests/lint/regen_snapshots.py")


def run(script: str) -> int:
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"== {script}", file=sys.stderr)
    return module.main() or 0


def main() -> int:
    sys.path.insert(0, str(ROOT))
    for script in SCRIPTS:
        code = run(script)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
