"""The copies the collectives make around the communication itself (docs/pytorch.md, Collectives).

A gather or scatter along dim 1 of a [batch, seq, hidden] tensor moves rank-major parts: with
one sample they are views, with more each collective copies the whole tensor once. model.py's
stream is sequence-first, [seq, batch, hidden], so its sequence-parallel collectives are along
dim 0 and copy nothing. Counted with a dispatch mode over every aten op the function runs,
the communication itself replaced by a no-op on two pretend ranks (what it writes does not
change which copies the layout needs).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from par.codegen.pytorch.runtime import collectives  # noqa: E402

COPIES = {"clone", "copy_", "_to_copy", "cat", "contiguous"}


class _Copies(TorchDispatchMode):
    """Bytes written by every op that copies a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in COPIES:
            self.written += out.numel() * out.element_size()
        return out


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setattr(collectives, "_record", lambda *args, **kwargs: None)
    monkeypatch.setattr(collectives.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(collectives.dist, "all_gather_single", lambda output, tensor, group=None: None)
    monkeypatch.setattr(collectives.dist, "reduce_scatter_single", lambda output, tensor, group=None: None)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_sequence_gather_and_scatter_copy_the_whole_tensor_once_unless_one_sample(two_ranks, batch):
    part = torch.randn(batch, 8, 16)  # [batch, seq / 2, hidden]
    with _Copies() as gather:
        gathered = collectives._all_gather(part, 1, None)
    assert gathered.shape == (batch, 16, 16)
    whole = torch.randn(batch, 16, 16)
    with _Copies() as scatter:
        mine = collectives._reduce_scatter(whole, 1, None)
    assert mine.shape == (batch, 8, 16)
    size = whole.numel() * whole.element_size()
    assert (gather.written, scatter.written) == ((0, 0) if batch == 1 else (size, size))


def test_a_gather_along_the_first_dimension_copies_nothing(two_ranks):
    part = torch.randn(4, 8, 16)
    with _Copies() as gather:
        collectives._all_gather(part, 0, None)
    assert gather.written == 0
