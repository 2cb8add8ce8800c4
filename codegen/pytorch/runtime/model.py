"""The model part of model.py for one small spec: what the emitter writes from each spec's block.

model.py defines these names itself (the layer, Stage, Reference, reference_layer, the SHARDING
table), above the runtime; the inliner drops every import of a runtime module, this one
included. Here they are written out for a block of one norm and one linear at TP = 1, as the
emitter writes them, so that the harness type-checks and runs in unit tests.
"""

from __future__ import annotations

import torch
from torch import nn

from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.seeds import generator
from par.codegen.pytorch.runtime.spec import DTYPE, HIDDEN, LAYERS, STAGES


class ResidualLayer(nn.Module):
    """One layer of block `residual`: the DAG's steps, in its order."""

    def __init__(self, groups: Groups) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(HIDDEN)
        self.fc = nn.Linear(HIDDEN, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.ln(x)
        fc = self.fc(ln)
        out = x + fc
        return out


class Stage(nn.Module):
    """The layers of one pipeline stage as one tensor-parallel rank holds them."""

    def __init__(self, groups: Groups) -> None:
        super().__init__()
        self.groups = groups
        self.chunk = 0  # interleaved: the model chunk the next forward runs (emitted only then)
        first, last = STAGES[groups.stage]
        self.layers = nn.ModuleDict({str(layer): ResidualLayer(groups) for layer in range(first, last + 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x

    def serve(
        self, x: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]], position: torch.Tensor, decoding: bool
    ) -> torch.Tensor:
        """Generation's pass (a model with a vocabulary has it; this block has no attention to cache)."""
        return self(x)


class ReferenceResidualLayer(nn.Module):
    """One layer of block `residual`, unsharded."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(HIDDEN)
        self.fc = nn.Linear(HIDDEN, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.ln(x)
        fc = self.fc(ln)
        out = x + fc
        return out


class Reference(nn.Module):
    """The whole model, unsharded, in one process."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(layer): reference_layer(layer, seed) for layer in range(LAYERS)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x


def reference_layer(layer: int, seed: int) -> ReferenceResidualLayer:
    """Layer `layer` of Reference, drawn from (seed, layer) alone."""
    module = ReferenceResidualLayer()
    random = generator(seed, "layer", layer)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=random) / param.shape[-1] ** 0.5)
    return module.to(DTYPE)


SHARDING = {"ln.weight": "replicated", "ln.bias": "replicated", "fc.weight": "replicated"}
# With a block per range of layers (BLOCKWISE): each block's SHARDING, and the block of a layer.
BLOCK_SHARDING = {"residual": SHARDING}


def block_of(layer: int) -> str:
    return "residual"
END_SHARDING: dict[str, str] = {}  # the model's ends: this one has none (ENDS)


def reference_ends(seed: int) -> dict[str, torch.Tensor]:
    """Reference's parameters outside the layers: none here."""
    return {}


# Hugging Face checkpoint names: each parameter is its checkpoint tensors concatenated along the
# rows; TRANSPOSED ones are stored [in, out].
CHECKPOINT = {
    "layers.{i}.ln.weight": ("model.layers.{i}.norm.weight",),
    "layers.{i}.ln.bias": ("model.layers.{i}.norm.bias",),
    "layers.{i}.fc.weight": ("model.layers.{i}.fc.weight",),
}
TRANSPOSED: tuple[str, ...] = ()
