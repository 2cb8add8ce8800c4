"""Random streams: weights and batches drawn from the seed alone, the same in every process."""

from __future__ import annotations

import hashlib

import torch


def generator(seed: int, *stream: object) -> torch.Generator:
    """A random stream of its own for each (seed, purpose, index)."""
    digest = hashlib.sha256(repr((seed, *stream)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
