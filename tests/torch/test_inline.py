"""Inlining the runtime into model.py: ifs on constants decided, pieces split, only what is reached kept."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from small_models import BLOCKS, compile_small, compile_source

from par.codegen.pytorch import inline
from par.codegen.pytorch.emit import AFTER_SHARDING, BESIDE_LAYER, BESIDE_REFERENCE, HARNESS, emit_model, model_view
from par.dsl.lowering.backward import PAIRS

CONSTANTS = {"TP": 2, "DP": 1, "SCHEDULE": "gpipe"}


def _fold(text: str) -> str:
    return inline.fold(textwrap.dedent(text), CONSTANTS)


def test_an_if_on_constants_keeps_the_branch_taken_dedented():
    folded = _fold(
        """
        def f(x):
            if TP > 1:
                # split over TP
                x = x.chunk(TP)
            else:
                x = [x]
            if DP > 1:
                x = x * DP
            return x
        """
    )
    assert folded == textwrap.dedent(
        """
        def f(x):
            # split over TP
            x = x.chunk(TP)
            return x
        """
    )


def test_the_else_branch_is_kept_when_the_test_fails_also_in_a_class_body():
    folded = _fold(
        """
        class C:
            if SCHEDULE == "1f1b":
                a = 1
            else:
                b = 2
        """
    )
    assert "a = 1" not in folded and "    b = 2" in folded
    ast.parse(folded)


def test_a_leading_fact_of_a_conjunction_is_decided_and_the_rest_kept():
    folded = _fold(
        """
        if TP > 1 and x.ok:  # why
            y = 1
        if DP > 1 and x.ok:
            z = 1
        """
    )
    assert folded == "\nif x.ok:  # why\n    y = 1\n"


def test_ifs_on_runtime_values_stay():
    text = "if x > 1:\n    y = TP\n"
    assert inline.fold(text, CONSTANTS) == text


def test_split_drops_docstring_and_imports_and_keeps_the_header_and_attached_comments():
    text = textwrap.dedent(
        '''
        """Doc."""

        import torch

        # -- Header --------
        # about the section


        # about f
        def f():
            return g()


        def g():
            return 1


        H = 3
        '''
    )
    section = inline.split("m", text)
    assert section.header == "# -- Header --------\n# about the section"
    assert [sorted(piece.defines) for piece in section.pieces] == [["f"], ["g"], ["H"]]
    assert section.pieces[0].text.startswith("# about f\ndef f():")
    assert "g" in section.pieces[0].refers
    kept = inline.reachable([section], ["f"])
    header = "# -- Header --------\n# about the section"
    assert section.text(kept) == f"{header}\n\n\n# about f\ndef f():\n    return g()\n\n\ndef g():\n    return 1"
    assert section.text(set()) == ""


def test_a_build_time_fact_outside_an_if_test_is_refused():
    with pytest.raises(AssertionError, match="SCHEDULE"):
        inline.split("m", "def f():\n    return SCHEDULE\n")


def _top_level(source: str) -> dict[str, ast.stmt]:
    found = {}
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.FunctionDef | ast.ClassDef):
            found[statement.name] = statement
    return found


MODELS = [
    ("baseline_tp8_pp2", ["tp=2", "layers=4", "batch=4"]),
    ("megatron_tp8_pp2", ["tp=1", "pp=2", "layers=2", "batch=4"]),
    ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=2", "layers=4", "batch=8", "microbatches=2"]),
]


@pytest.mark.parametrize(("spec", "defines"), MODELS)
def test_every_function_and_class_of_model_py_is_used(spec, defines):
    source = emit_model(compile_small(spec, defines))
    definitions = _top_level(source)
    # each top-level statement's names, gathered once
    names_of = [(other, {n.id for n in ast.walk(other) if isinstance(n, ast.Name)}) for other in ast.parse(source).body]
    for name, statement in definitions.items():
        users = [other for other, names in names_of if other is not statement and name in names]
        assert users, f"{spec}: {name} is defined but never used"


@pytest.mark.parametrize(
    "compiled",
    [compile_small(spec, defines) for spec, defines in MODELS] + [compile_source(BLOCKS["ulysses"])],
    ids=[spec for spec, _ in MODELS] + ["ulysses"],
)
def test_model_py_defines_exactly_the_collectives_its_pairs_and_gradient_reduction_issue(compiled):
    view = model_view(compiled)
    issued = {
        kind for helper in view.helpers if helper in PAIRS for kind in (PAIRS[helper].forward, PAIRS[helper].backward)
    }
    mesh = compiled.deployment.mesh
    if view.layer.partial_gradients or mesh.dp > 1:
        issued.add("allreduce")
    names = {
        "allreduce": "_all_reduce",
        "allgather": "_all_gather",
        "reducescatter": "_reduce_scatter",
        "alltoall": "_all_to_all",
    }
    expected = {names[kind] for kind in issued if kind} | ({"_exchange"} if mesh.pp > 1 else set())
    defined = set(_top_level(emit_model(compiled)))
    assert defined & {*names.values(), "_exchange"} == expected
    assert {helper for helper in PAIRS if helper in defined} == {helper for helper in view.helpers if helper in PAIRS}


def test_an_elif_on_constants_is_refused_not_folded_into_its_else():
    """Folded alone, `elif FLAG:` would drop the `else:` above its body and run that body always."""
    text = """
    if ready:
        value = 1
    elif TP > 1:
        value = 2
    else:
        value = 3
    """
    with pytest.raises(AssertionError, match="nest the test on constants under `else:`"):
        _fold(text)


# -- The shipped outlines (runtime/outlines.json) ---------------------------------------------------

RUNTIME = Path(__file__).resolve().parents[2] / "codegen" / "pytorch" / "runtime"
STALE = "codegen/pytorch/runtime/outlines.json is stale: run python -m par.codegen.pytorch.inline"


def test_the_shipped_outlines_are_what_a_rebuild_makes():
    assert (RUNTIME / inline.OUTLINES).read_bytes() == inline.outlines(), STALE


@pytest.mark.parametrize("module", sorted(path.stem for path in RUNTIME.glob("*.py") if path.name != "__init__.py"))
def test_every_runtime_module_is_outlined_from_the_shipped_file(module, monkeypatch):
    text = inline.source(module)
    shipped = inline.module_outline(module, text)
    assert shipped is inline._shipped()[module]["outline"], STALE
    monkeypatch.setattr(inline, "outline", lambda text: pytest.fail("parsed"))
    inline.module_outline(module, text)


def test_an_edited_module_is_outlined_from_its_text():
    text = inline.source("seeds")
    edited = text + "\n\ndef added():\n    return 1\n"
    assert inline.module_outline("seeds", edited) == inline.outline(edited) != inline.outline(text)


def test_no_outlines_file_outlines_every_module_from_its_text(monkeypatch):
    monkeypatch.setattr(inline, "OUTLINES", "missing.json")
    inline._shipped.cache_clear()
    try:
        assert inline._shipped() == {}
        assert inline.module_outline("seeds", inline.source("seeds")) == inline.outline(inline.source("seeds"))
    finally:
        monkeypatch.undo()
        inline._shipped.cache_clear()


SECTION_CONSTANTS = [
    {"TP": 1, "PP": 1, "DP": 1, "CP": 1, "EP": 1, "SCHEDULE": "gpipe", "CHUNKS": 1, "ZERO": 0},
    {"TP": 4, "PP": 2, "DP": 2, "CP": 2, "EP": 2, "SCHEDULE": "1f1b", "CHUNKS": 2, "ZERO": 2},
]
FACTS = sorted(inline.BUILD_TIME - {"SCHEDULE", "CP_ATTENTION", "ROUTER"})


INLINED = sorted({*BESIDE_LAYER, *BESIDE_REFERENCE, *AFTER_SHARDING, *HARNESS, "pipeline", "interleaved", "single_stage"} - {"schedule"})


@pytest.mark.parametrize("module", INLINED)
@pytest.mark.parametrize("facts", [False, True])
@pytest.mark.parametrize("constants", SECTION_CONSTANTS)
def test_a_section_is_the_folded_text_split(module, facts, constants):
    """Sections read the folded lines' statements off the outline; parsing the folded text gives the same."""
    constants = constants | dict.fromkeys(FACTS, facts) | {"CP_ATTENTION": "ring", "ROUTER": "softmax_topk"}
    section = inline.section(module, constants)
    parsed = inline.split(module, inline.fold(inline.source(module), constants))
    assert section.header == parsed.header
    assert [(p.defines, p.refers, p.text) for p in section.pieces] == [(p.defines, p.refers, p.text) for p in parsed.pieces]
