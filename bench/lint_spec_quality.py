"""How much `par lint --spec` says that is true, on real files and on `par`'s own drawings.

    python bench/lint_spec_quality.py [--labels tests/lint/spec_labels.json] [--show]

Three measurements, printed in one run:

1. Noise: each labelled corpus file (shared/corpus/dags) against the spec of its own deployment
   (tests/lint/specs/, written from what the file's labels say: layers, tensor and pipeline
   parallel degrees): findings per file. A file that draws its deployment faithfully, in
   whatever shorthand, should give none.
2. Precision and recall: every labelled file against every spec of tests/lint/specs/. Each finding
   has a hand verdict in tests/lint/spec_labels.json (keyed by file, spec, rule code and the
   finding's message up to its first " ("), and each pair lists the differences a reviewer sees
   between the file and the spec (its layers, its pipeline boundaries, the collectives of the
   layers it draws op by op, its tensor-parallel degree), each with the keys that find it.
   A finding the labels do not know is listed as unlabelled and left out of the numbers.
3. Exactness on `par`'s drawings: every spec of specs/ compiled and drawn as `par build` draws it
   (dag.dot and dag.compact.dot; a serving spec's phase by phase, dag.prefill.dot ...) must
   give no finding at all; then, one at a time, the first
   collective of each kind in the first layer drawn in full and the first Send are deleted from
   the drawing (statement and edges, as a hand edit would) and each must be found by a SPEC002
   naming it: in every compact drawing, and in the full drawing of the smallest spec (reading a
   full drawing again per deletion is most of the run's time).
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

from par.codegen.dot.emit import emit_compact_dot, emit_dot  # noqa: E402
from par.dsl.compiler import compile_file  # noqa: E402
from par.dsl.registry.collectives import PIPELINE  # noqa: E402
from par.lint import lint_file  # noqa: E402
from par.lint.dot_reader import read_dot_text  # noqa: E402
from par.lint.lint import lint_graph  # noqa: E402


def finding_key(finding) -> str:
    return f"{finding.code} {finding.message.split(' (')[0]}"


def spec_findings(path: str, dag, name: str) -> list:
    return [finding for finding in lint_file(path, spec_dag=dag, spec_name=name).findings
            if finding.code.startswith("SPEC")]


def corpus_quality(labels: dict, corpus: Path, show: bool) -> None:
    specs = {name: compile_file(REPO / path, []).graph for name, path in sorted(labels["specs"].items())}
    right, wrong, unlabelled = Counter(), Counter(), []
    found = total = 0
    print("noise: each file against the spec of its own deployment")
    for name, record in sorted(labels["files"].items()):
        own = record["spec"]
        count = len(spec_findings(str(corpus / name), specs[own], own))
        print(f"  {count:3} findings  {name}  ({own})")
    for name, record in sorted(labels["files"].items()):
        verdicts = {(entry["spec"], entry["key"]): entry for entry in record["findings"]}
        for spec, dag in specs.items():
            keys = set()
            for finding in spec_findings(str(corpus / name), dag, spec):
                key = finding_key(finding)
                keys.add(key)
                verdict = verdicts.get((spec, key))
                if verdict is None:
                    unlabelled.append(f"{name} vs {spec}: {key}")
                elif verdict["true"]:
                    right[finding.code] += 1
                else:
                    wrong[finding.code] += 1
                    if show:
                        print(f"false  {name} vs {spec}: {key}: {verdict['why']}")
            for defect in record["defects"]:
                if defect["spec"] != spec:
                    continue
                total += 1
                hit = any(key in keys for key in defect["found_by"])
                found += hit
                if show and not hit:
                    print(f"missed {name} vs {spec}: {defect['what']}")
    print(f"every file against every spec ({len(labels['files'])} files x {len(specs)} specs)")
    print(f"{'rule':8} {'findings':>8} {'true':>5} {'precision':>9}")
    for code in sorted(set(right) | set(wrong)):
        n = right[code] + wrong[code]
        print(f"{code:8} {n:8} {right[code]:5} {right[code] / n:9.1%}")
    n = sum(right.values()) + sum(wrong.values())
    print(f"{'overall':8} {n:8} {sum(right.values()):5} {sum(right.values()) / n if n else 1:9.1%}")
    print(f"recall: {found} of {total} labelled differences found ({found / total:.1%})")
    if unlabelled:
        print(f"{len(unlabelled)} unlabelled findings (not counted):")
        for line in unlabelled:
            print("  " + line)


def own_drawings() -> None:
    print("par's own drawings of specs/ (dag.dot and dag.compact.dot)")
    clean = drawings = found = planted = 0
    compiled_specs = {path: compile_file(path, []) for path in sorted((REPO / "specs").glob("*.par"))}
    smallest = min(compiled_specs, key=lambda path: len(compiled_specs[path].graph))
    # A serving spec is drawn phase by phase, as `par build` draws it (dag.prefill.dot, ...).
    phases = [(path, phase, view) for path, compiled in compiled_specs.items() for phase, view in compiled.phases or (("", compiled),)]
    for path, phase, compiled in phases:
        dag = compiled.graph
        for view, emit in ((f"dag.{phase}.dot", emit_dot), (f"dag.{phase}.compact.dot", emit_compact_dot)):
            view = view.replace("..", ".")
            text = emit(compiled)
            findings = _lint(text, dag)
            drawings += 1
            clean += not findings
            for finding in findings:
                print(f"  false  {path.stem}/{view}: {finding.code} {finding.message}")
            if not view.endswith("compact.dot") and path != smallest:
                continue
            for node in _victims(text, dag):
                planted += 1
                hits = [f for f in _lint(_without(text, node), dag)
                        if f.code == "SPEC002" and f"`{node}`" in f.message]
                found += bool(hits)
                if not hits:
                    print(f"  missed {path.stem}/{view}: `{node}` deleted")
    print(f"  {clean} of {drawings} drawings without a finding; "
          f"{found} of {planted} deleted collectives found")


def _lint(text: str, dag) -> list:
    return [finding for graph in read_dot_text(text, file="dag.dot")
            for finding in lint_graph(graph, spec_dag=dag)[1]]


def _victims(text: str, dag) -> list[str]:
    """The first collective of each kind of the first layer drawn with its collectives, and the
    first pipeline send."""
    drawn = [node for node, data in dag.nodes(data=True)
             if data["kind"] == "comm" and f'"{node}"' in text]
    layers = sorted({dag.nodes[node]["layer"] for node in drawn} - {None})
    victims: dict[str, str] = {}
    for node in sorted(drawn):
        data = dag.nodes[node]
        if (data["layer"] is not None and layers and data["layer"] == layers[0]) or (
                data["op"] in PIPELINE and data["op"] == "send"):
            victims.setdefault(data["op"], node)
    return sorted(victims.values())


def _without(text: str, node: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if f'"{node}"' not in line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO / "tests/lint/spec_labels.json"))
    parser.add_argument("--show", action="store_true", help="list false, unlabelled and missed")
    args = parser.parse_args(argv)
    corpus = full_corpus()
    if corpus is None:
        print("the shared corpus (shared/corpus/dags or $PAR_CORPUS) is not here", file=sys.stderr)
        return 2
    corpus_quality(json.loads(Path(args.labels).read_text(encoding="utf-8")), corpus, args.show)
    own_drawings()
    return 0


if __name__ == "__main__":
    sys.exit(main())
