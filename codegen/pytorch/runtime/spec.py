"""The spec's constants, as the runtime modules see them outside model.py.

model.py defines the constants the spec fixes (TP, HIDDEN, STAGES, ...) itself, above the
runtime; the inliner drops every import of a runtime module, this one included. The values
here are those of a small deployment, so that the runtime modules import, type-check and run
in unit tests (which change them with monkeypatch where a test needs another mesh).

The names below the line are build-time facts: the inliner decides every `if` on them (and on
the constants) when it writes model.py, so they never appear there.
"""

from __future__ import annotations

import torch

LAYERS = 2
HIDDEN = 16
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
BATCH = 4
SEQ = 8
DTYPE = torch.float32
GRAD_DTYPE = torch.float32
TP = 1
PP = 1
DP = 1
CP = 1  # context-parallel ranks: each holds chunks c and 2·CP − 1 − c of the sequence
WORLD_SIZE = TP * CP * PP * DP
MICROBATCHES = 2
STAGES = ((0, 1),)
CHUNKS = 1  # model chunks per stage (schedule interleaved: STAGES has PP * CHUNKS entries, chunk k on stage k % PP)
STAGE_LAYERS = ((0, 1),)  # interleaved: the layers each stage holds
EXPERTS = 4  # a mixture of experts' (MOE below): routed experts per layer, and experts per token
TOP_K = 2
EP = 1  # expert-parallel degree: each group of EP data-parallel replicas spreads the experts
ROPE_THETA = 10000.0  # the rotary embedding's base, and its scaling's numbers (transformers' names)
ROPE_FACTOR = 8.0
ROPE_LOW_FREQ_FACTOR = 1.0
ROPE_HIGH_FREQ_FACTOR = 4.0
ROPE_ORIGINAL_MAX_POSITIONS = 8192
STREAM_SHAPE = (SEQ, BATCH // DP // MICROBATCHES, HIDDEN)  # sequence-first
PARTIAL_GRADIENTS: tuple[str, ...] = ()
EXPERT_GRADIENTS: tuple[str, ...] = ()  # the local experts' weights: reduced over the ranks holding the same experts
VOCAB = 50  # the model's ends (ENDS below)
PADDED_VOCAB = VOCAB  # a multiple of TP
MAX_POSITIONS = SEQ
KV_CACHE_HEADS = KV_HEADS // TP  # the KV heads of each layer's KV cache on one rank
KV_DTYPE = DTYPE  # the KV cache's dtype: a serving spec's kv_dtype, else DTYPE

# -- build-time facts: decided by the inliner, never written into model.py --------------------------
SEQUENCE_PARALLEL = False  # the residual stream is split along seq across tp ranks
SCHEDULE = "1f1b"  # the pipeline schedule: gpipe | 1f1b | interleaved
ZERO = 0  # ZeRO stage with DP > 1 (0, 1 or 2): each rank of the gradient group updates its 1/SHARDS of the parameters
BY_HEAD = False  # some weight is split per head of a fused QKV
MIXED_PRECISION = False  # fp16 or bf16 parameters: AdamW runs on fp32 master weights
FP32_GRADIENTS = False  # fp16 or bf16 parameters whose gradients are accumulated and reduced in fp32
LOSS_SCALING = False  # fp16: dynamic loss scaling
HF_CHECKPOINT = True  # the block's parameters have Hugging Face names: --load and --save
ROPE_SCALING = "none"  # the rotary embedding's frequency scaling: none | linear | llama3
ENDS = False  # the model has a vocabulary: token ids in, embedding, final norm, LM head and cross-entropy
GENERATES = False  # model.py generates (--generate): the model has a vocabulary and no interleaved schedule
TIED = False  # the LM head is the embedding's matrix
LEARNED_POSITIONS = False  # learned absolute positions are added at the embedding
PADDED = False  # PADDED_VOCAB > VOCAB: the padding rows' logits are masked
MOE = False  # the block has a mixture of experts
ROUTER = "softmax_topk"  # softmax_topk | topk_softmax
ROUTER_NORM = True  # the top-k weights are renormalised to sum to 1
ROUTER_AUX_LOSS_COEF = 0.0  # the load-balancing loss's weight (0: none)
BLOCKWISE = False  # a block per range of layers: the layer class, Reference's and SHARDING are the layer's block's
CP_ATTENTION = "ring"  # context parallelism's attention: ring | allgather
