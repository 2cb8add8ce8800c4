"""The Python names model.py gives block values cannot collide with what the generated code uses."""

from __future__ import annotations

import ast

import pytest
from small_models import BLOCKS, compile_source

from par.codegen.pytorch.emit import emit_model
from par.codegen.pytorch.names import GLOBALS, MODULE_ATTRIBUTES, Names


def test_every_public_module_attribute_is_reserved():
    """Private attributes and dunders are safe by the leading-underscore rule; the public ones
    must be in the list (kept as data: the compiler never imports torch)."""
    torch = pytest.importorskip("torch")
    module = torch.nn.Module()
    public = {name for name in set(dir(module)) | set(vars(module)) if not name.startswith("_")}
    # torch's own: transformers, which the oracle tests import, adds `smart_apply` to nn.Module
    # when it builds a model; model.py never imports it.
    public = {name for name in public if getattr(getattr(torch.nn.Module, name, None), "__module__", "torch").startswith("torch")}
    assert public - MODULE_ATTRIBUTES == set()


def test_no_python_name_starts_with_an_underscore_or_is_reserved():
    names = Names()
    given = [names.of(name) for name in ("__init__", "_modules", "_", "training", "v_modules", "if", "copy_to_tp")]
    assert given == ["v__init__", "v_modules", "v_", "training_", "v_modules_", "if_", "copy_to_tp_"]


def _free_names(function: ast.FunctionDef) -> set[str]:
    assigned = {arg.arg for arg in function.args.args}
    names = [node for node in ast.walk(function) if isinstance(node, ast.Name)]
    assigned |= {node.id for node in names if isinstance(node.ctx, ast.Store)}
    return {node.id for node in names if isinstance(node.ctx, ast.Load)} - assigned


@pytest.mark.parametrize("name", BLOCKS)
def test_a_layer_forward_refers_only_to_names_no_value_can_take(name):
    """Every module-level name a layer's forward reads is in GLOBALS, so a block value can never shadow it."""
    tree = ast.parse(emit_model(compile_source(BLOCKS[name])))
    forwards = [
        item
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.endswith("Layer")
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == "forward"
    ]
    assert len(forwards) == 2  # the sharded layer and its Reference
    for forward in forwards:
        assert _free_names(forward) - GLOBALS == set()
