"""What autograd keeps for backward: the storages its saved-tensor hooks see."""

from __future__ import annotations

import torch


def measure(fn, inputs, parameters) -> tuple[int, object, dict[int, int]]:
    """Bytes of the distinct storages autograd saves while `fn(*inputs)` runs (parameters left out), the result, the storages."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn(*inputs)
    return sum(storages.values()), out, storages
