"""Python names for the values and submodules of a block in the generated model.py.

Block names follow the spec's NAME rule, so most are valid Python already. Two kinds are not
safe as they are, and get another name (the same block name always gets the same one):

* A name that starts with `_`: every dunder (`__init__`, `__call__`, `__dict__`) and every
  private attribute of `nn.Module` (`_modules`, `_parameters`, ...) starts so, and `__x` would be
  name-mangled inside the layer class. These get a leading `v` (`_modules` -> `v_modules`).
* A keyword, a public `nn.Module` attribute a submodule would hide, or a module-level name the
  layer's forward refers to. These get a trailing underscore (`training` -> `training_`).
"""

from __future__ import annotations

import keyword

from par.dsl.lowering.backward import PAIRS

# Functions model.py defines for a layer's forward to call: the forward/backward pairs and the ops.
HELPERS = frozenset(PAIRS) | {"causal_attention", "rotary_embedding", "group_heads", "ungroup_heads"}
# Module-level names a layer's forward refers to (tests/torch/test_names.py reads the forward to check).
GLOBALS = frozenset({"F", "TP", "HIDDEN", "FFN", "HEADS", "KV_HEADS", "HEAD_DIM", "dist", "nn", "torch", "self"} | HELPERS)
# Public attributes of an nn.Module instance (torch 2.13; tests/torch/test_names.py checks them against
# the installed torch) and those the layer sets itself.
MODULE_ATTRIBUTES = frozenset({
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile",
    "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia",
    "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
    "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
    "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad",
    "tp_group", "tp_rank",
})
RESERVED = frozenset(GLOBALS | MODULE_ATTRIBUTES | set(keyword.kwlist) | set(keyword.softkwlist))


class Names:
    """Allocates unique Python identifiers; the same block name always gets the same identifier."""

    def __init__(self) -> None:
        self._given: dict[str, str] = {}
        self._taken: set[str] = set(RESERVED)

    def of(self, name: str) -> str:
        if name not in self._given:
            self._given[name] = self.fresh(name)
        return self._given[name]

    def fresh(self, base: str) -> str:
        candidate = "v" + base if base.startswith("_") else base
        while candidate in self._taken:
            candidate += "_"
        self._taken.add(candidate)
        return candidate
