"""Python names for the values and submodules of a block in the generated model.py.

Block names follow the spec's NAME rule, so most are valid Python already; the few that are
keywords, or that would shadow a name the generated code uses, get a trailing underscore.
"""

from __future__ import annotations

import keyword

from dsl.backward import PAIRS

# Functions model.py defines for a layer's forward to call: the forward/backward pairs and the ops.
HELPERS = frozenset(PAIRS) | {"causal_attention", "group_heads", "ungroup_heads"}
# Module-level names a layer's forward refers to, and nn.Module attributes a submodule must not hide.
_GLOBALS = {"F", "TP", "dist", "nn", "torch", "self"} | HELPERS
_MODULE_ATTRIBUTES = {
    "add_module", "apply", "bfloat16", "buffers", "children", "compile", "cpu", "cuda", "double",
    "eval", "extra_repr", "float", "forward", "get_buffer", "get_extra_state", "get_parameter",
    "get_submodule", "half", "load_state_dict", "modules", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_buffer", "register_module",
    "register_parameter", "requires_grad_", "set_extra_state", "share_memory", "state_dict", "to",
    "train", "training", "type", "zero_grad", "tp_group", "tp_rank",
}
RESERVED = frozenset(_GLOBALS | _MODULE_ATTRIBUTES | set(keyword.kwlist) | set(keyword.softkwlist))


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
        candidate = base
        while candidate in self._taken:
            candidate += "_"
        self._taken.add(candidate)
        return candidate
