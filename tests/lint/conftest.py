import sys
from pathlib import Path

# The lint tests share helper modules that sit beside them (lint_dags, lint_snapshots).
sys.path.insert(0, str(Path(__file__).resolve().parent))
