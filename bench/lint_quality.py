"""Precision and recall of `par lint` on the shared corpus, against hand-made verdicts.

    python bench/lint_quality.py [--labels tests/lint/quality_labels.json] [--show]

tests/lint/quality_labels.json holds, per corpus file, a verdict (true or false, with a one-line
reason) for every finding lint gave when the labels were made, keyed by rule code and the
finding's first node; and the defects a reviewer finds in the file, each with the finding keys
that count as finding it (a defect no rule finds yet names the key a rule would give).

Precision: true findings / labelled findings, per rule and overall; a finding is judged by the
verdict on its first node. A finding the labels do not know is listed as unlabelled and left out
of the numbers: label it by hand before trusting them. Recall: defects found / all labelled
defects; a defect is found when a finding of one of its keys' rules names one of its keys' nodes.
Targets: precision >= 95 % overall and >= 90 % for every rule with >= 5 findings; recall >= 80 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lint"))

from lint_snapshots import full_corpus  # noqa: E402

from par.lint import lint_file  # noqa: E402


def finding_key(finding) -> str:
    return f"{finding.code} {finding.nodes[0]}" if finding.nodes else finding.code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO / "tests/lint/quality_labels.json"))
    parser.add_argument("--show", action="store_true", help="list false and unlabelled findings")
    args = parser.parse_args(argv)
    corpus = full_corpus()
    if corpus is None:
        print("the shared corpus (shared/corpus/dags or $PAR_CORPUS) is not here", file=sys.stderr)
        return 2
    labels = json.loads(Path(args.labels).read_text(encoding="utf-8"))["files"]
    right, wrong, unlabelled = Counter(), Counter(), []
    found = total = 0
    for name, record in sorted(labels.items()):
        verdicts = {entry["key"]: entry for entry in record["findings"]}
        keys = set()
        for finding in lint_file(str(corpus / name)).findings:
            key = finding_key(finding)
            # a finding that names several nodes (one per defect, grouped) finds each of them
            keys.update(f"{finding.code} {node}" for node in finding.nodes)
            keys.add(key)
            verdict = verdicts.get(key)
            if verdict is None:
                unlabelled.append(f"{name}: {key}: {finding.message}")
            elif verdict["true"]:
                right[finding.code] += 1
            else:
                wrong[finding.code] += 1
                if args.show:
                    print(f"false  {name}: {key}: {verdict['why']}")
        for defect in record["defects"]:
            total += 1
            hit = any(key in keys for key in defect["found_by"])
            found += hit
            if args.show and not hit:
                print(f"missed {name}: {defect['what']}")
    print(f"{'rule':8} {'findings':>8} {'true':>5} {'precision':>9}")
    for code in sorted(set(right) | set(wrong)):
        n = right[code] + wrong[code]
        print(f"{code:8} {n:8} {right[code]:5} {right[code] / n:9.1%}")
    n = sum(right.values()) + sum(wrong.values())
    precision = sum(right.values()) / n if n else 1.0
    print(f"{'overall':8} {n:8} {sum(right.values()):5} {precision:9.1%}")
    print(f"recall: {found} of {total} labelled defects found ({found / total:.1%})")
    if unlabelled:
        print(f"{len(unlabelled)} unlabelled findings (not counted):")
        for line in unlabelled:
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
