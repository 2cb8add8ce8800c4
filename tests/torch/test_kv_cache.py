"""The KV cache of generation, in one process: a prefill of the prompt and then one decode step
per position, each writing its keys and values into the cache and attending over all of it (the
later positions masked), give what causal attention and rope over the whole sequence give at
those positions; the same with grouped-query attention and with the heads of several ranks in
one tensor; a cache written one position off does not."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from par.codegen.pytorch.runtime import ops  # noqa: E402
from par.codegen.pytorch.runtime.ops import KVCache, causal_attention, rotary_embedding  # noqa: E402

PROMPT, NEW, BATCH = 5, 4, 3


def _cached(qkv: torch.Tensor, heads: int, kv_heads: int, groups: int, shift: int = 0) -> torch.Tensor:
    """Rope, then attention, over `qkv` [PROMPT + NEW, batch, features] (sequence-first): the prompt at once, then one
    position at a time through a cache; the outputs of every position."""
    shape = (BATCH, kv_heads, PROMPT + NEW, ops.HEAD_DIM)
    k, v = torch.zeros(shape), torch.zeros(shape)

    def layer(x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        turned = rotary_embedding(x, heads=heads, kv_heads=kv_heads, groups=groups, cache=cache)
        return causal_attention(turned, heads=heads, kv_heads=kv_heads, groups=groups, cache=cache)

    outputs = [layer(qkv[:PROMPT], KVCache(k, v, torch.tensor(0), False))]
    for position in range(PROMPT, PROMPT + NEW):
        outputs.append(layer(qkv[position : position + 1], KVCache(k, v, torch.tensor(position + shift), True)))
    return torch.cat(outputs)


@pytest.mark.parametrize(("heads", "kv_heads", "groups"), [(4, 4, 1), (4, 2, 1), (4, 2, 2)], ids=["mha", "gqa", "gqa-2-blocks"])
def test_prefill_and_decode_steps_equal_attention_over_the_whole_sequence(monkeypatch, heads, kv_heads, groups):
    monkeypatch.setattr(ops, "ENDS", True)  # generation exists where the model has a vocabulary
    monkeypatch.setattr(ops, "KV_HEADS", kv_heads)
    monkeypatch.setattr(ops, "HEADS", heads)
    features = (heads + 2 * kv_heads) * ops.HEAD_DIM
    qkv = torch.randn(PROMPT + NEW, BATCH, features, generator=torch.Generator().manual_seed(0))
    whole = causal_attention(
        rotary_embedding(qkv, heads=heads, kv_heads=kv_heads, groups=groups), heads=heads, kv_heads=kv_heads, groups=groups
    )
    assert torch.allclose(_cached(qkv, heads, kv_heads, groups), whole, atol=1e-6, rtol=1e-5)
    wrong = _cached(qkv, heads, kv_heads, groups, shift=-1)  # each step writes over the position before it
    assert torch.allclose(wrong[:PROMPT], whole[:PROMPT], atol=1e-6)
    assert not torch.allclose(wrong[PROMPT:], whole[PROMPT:], atol=1e-3)
