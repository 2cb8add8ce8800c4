"""A checked spec: every number evaluated, every name resolved. Produced by `par.dsl.checks.check`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from par.dsl.dag.types import Dtype, MeshAttrs, Recompute, Schedule
from par.dsl.frontend.source import Span

DTYPE_BYTES: dict[Dtype, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
# The mesh's `grad_dtype`: gradients are accumulated and reduced in fp32, or in the model's dtype.
GRAD_DTYPES = ("fp32", "model")
# The mesh's `recompute`: what the backward runs again instead of keeping (docs/language.md,
# Activation recomputation): nothing, each attention core (selective), or each layer (full).
RECOMPUTE: tuple[Recompute, ...] = get_args(Recompute)


# Rotary embedding's frequency scalings, as transformers' rope init functions name them.
ROPE_SCALINGS = ("none", "linear", "llama3")


@dataclass(frozen=True, slots=True)
class Rope:
    """The rotary embedding's settings (`rope_*`): the base and the frequency scaling, with the
    numbers transformers' `rope_init_fn`s read (`factor`; Llama 3.1's frequency bands)."""

    theta: float = 10000.0
    scaling: str = "none"  # one of ROPE_SCALINGS
    factor: float = 1.0  # linear and llama3
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_positions: int = 8192  # llama3


@dataclass(frozen=True, slots=True)
class Experts:
    """A mixture-of-experts model's routed experts (docs/language.md, Mixture of experts)."""

    experts: int  # routed experts per MoE layer
    top_k: int  # experts each token is routed to
    expert_ffn: int  # each expert's ffn width
    shared_experts: int  # experts every token goes through, beside the routed ones
    router: str  # softmax_topk | topk_softmax
    router_norm: bool  # the top-k weights are renormalised to sum to 1
    capacity_factor: float  # how many times its balanced share of tokens an expert may get (worst case)
    router_aux_loss_coef: float = 0.0  # the load-balancing loss's weight in training (0: none)


@dataclass(frozen=True, slots=True)
class Model:
    """The model's settings, evaluated and checked: sizes, dtype, vocabulary, rotary embedding and experts."""

    name: str
    block: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None
    batch: int
    seq: int
    dtype: Dtype
    norm_eps: float = 1e-5  # every norm's epsilon
    rope: Rope = Rope()
    # The model's ends (when `vocab` is set): the embedding, final norm, LM head and loss.
    tie_embeddings: bool = False  # the LM head reuses the embedding matrix
    positions: str = "none"  # none | learned: absolute positions added at the embedding
    max_positions: int | None = None  # rows of the learned position table (default: seq)
    final_norm: str = "layernorm"  # layernorm | rmsnorm (default: the kind of the block's first norm)
    moe: Experts | None = None  # None: no mixture of experts

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def padded_vocab(self, tp: int) -> int:
        """The vocabulary rounded up to a multiple of tp: each rank holds as many rows."""
        assert self.vocab is not None
        return -(-self.vocab // tp) * tp

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


# Context parallelism's attention algorithms (docs/language.md, Context parallelism).
CP_ATTENTION = ("ring", "allgather")


def mesh_coords(rank: int, *, tp: int, pp: int, cp: int = 1) -> tuple[int, int, int]:
    """(dp_rank, stage, tp_rank) of a global rank: tp varies fastest, then cp, then pp, then dp."""
    return rank // (tp * cp * pp), (rank // (tp * cp)) % pp, rank % tp


@dataclass(frozen=True, slots=True)
class Mesh:
    """The mesh's settings, evaluated and checked: the parallel degrees, microbatches, stages and schedule."""

    tp: int
    pp: int
    dp: int
    microbatches: int
    # per stage: (first layer, last layer), inclusive; interleaved, per model chunk in model
    # order, chunk k on stage k % pp (`chunk_stage`)
    stages: tuple[tuple[int, int], ...]
    schedule: Schedule
    sequence_parallel: bool
    grad_dtype: Dtype  # fp32, or the model's dtype: what gradients are accumulated and reduced in
    ep: int = 1  # expert-parallel degree: folds inside dp (docs/language.md, The expert-parallel group)
    cp: int = 1  # context-parallel degree: the sequence split across ranks (docs/language.md, Context parallelism)
    cp_attention: str = "ring"  # one of CP_ATTENTION
    etp: int | None = None  # expert tensor-parallel degree; None: tp
    recompute: Recompute = "none"  # one of RECOMPUTE
    chunks: int = 1  # model chunks per stage: Megatron's virtual pipeline size (schedule interleaved)
    zero: int = 0  # ZeRO stage: 1 shards optimizer state and master weights, 2 also gradients, 3 also weights

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    def chunk_stage(self, chunk: int) -> int:
        """The pipeline stage that runs model chunk `chunk` (an entry of `stages`): chunk k on
        stage k mod pp, so that stage s holds chunks s, s + pp, s + 2 pp, ..."""
        return chunk % self.pp

    def stage_layers(self, stage: int) -> tuple[int, ...]:
        """Every layer pipeline stage `stage` holds, in model order."""
        return tuple(
            layer for first, last in self.stages[stage :: self.pp] for layer in range(first, last + 1)
        )

    def rank(self, *, dp_rank: int, stage: int, tp_rank: int, cp_rank: int = 0) -> int:
        """tp fastest, then cp, then pp, then dp (docs/language.md, The rank order); with cp 1
        the numbering of a mesh without context parallelism."""
        return ((dp_rank * self.pp + stage) * self.cp + cp_rank) * self.tp + tp_rank

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(dp_rank, stage, tp_rank) of a global rank."""
        return mesh_coords(rank, tp=self.tp, pp=self.pp, cp=self.cp)

    def cp_rank(self, rank: int) -> int:
        """Which part of the sequence `rank` holds: its place in its context-parallel group."""
        return (rank // self.tp) % self.cp

    def tp_group(self, *, dp_rank: int, stage: int, cp_rank: int = 0) -> tuple[int, ...]:
        return tuple(self.rank(dp_rank=dp_rank, stage=stage, tp_rank=t, cp_rank=cp_rank) for t in range(self.tp))

    def tp_group_of(self, rank: int) -> tuple[int, ...]:
        dp_rank, stage, _ = self.coords(rank)
        return self.tp_group(dp_rank=dp_rank, stage=stage, cp_rank=self.cp_rank(rank))

    def cp_group(self, *, dp_rank: int, stage: int, tp_rank: int) -> tuple[int, ...]:
        """The ring of a context-parallel group, in cp-rank order: rank c sends to c + 1."""
        return tuple(self.rank(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank, cp_rank=c) for c in range(self.cp))

    def cp_group_of(self, rank: int) -> tuple[int, ...]:
        dp_rank, stage, tp_rank = self.coords(rank)
        return self.cp_group(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank)

    def dp_group_of(self, rank: int) -> tuple[int, ...]:
        """The ranks that hold the same shard as `rank` in every data-parallel replica."""
        _, stage, tp_rank = self.coords(rank)
        cp_rank = self.cp_rank(rank)
        return tuple(self.rank(dp_rank=d, stage=stage, tp_rank=tp_rank, cp_rank=cp_rank) for d in range(self.dp))

    def gradient_group_of(self, rank: int) -> tuple[int, ...]:
        """The ranks whose gradients of `rank`'s parameters are summed: the same shard in every
        data-parallel replica and every part of the sequence (dp × cp ranks)."""
        _, stage, tp_rank = self.coords(rank)
        return tuple(
            self.rank(dp_rank=d, stage=stage, tp_rank=tp_rank, cp_rank=c) for d in range(self.dp) for c in range(self.cp)
        )

    @property
    def expert_tp(self) -> int:
        """The expert tensor-parallel degree: `etp`, by default `tp`."""
        return self.tp if self.etp is None else self.etp

    def expert_coords(self, rank: int) -> tuple[int, int, int]:
        """(expert data-parallel rank, expert-parallel rank, expert tensor-parallel rank) of a
        rank: the tp × dp ranks of its stage, numbered tp fastest then dp, folded again as
        etp fastest, then ep, then the expert data-parallel rest (docs/language.md, Which ranks
        form a group)."""
        dp_rank, _, tp_rank = self.coords(rank)
        index, etp = dp_rank * self.tp + tp_rank, self.expert_tp
        return index // (etp * self.ep), index // etp % self.ep, index % etp

    def _stage_rank(self, stage: int, index: int) -> int:
        """The rank of a stage's `index`-th rank, numbered tp fastest then dp (cp is 1 where
        experts are: context parallelism with expert parallelism is refused)."""
        dp_rank, tp_rank = divmod(index, self.tp)
        return self.rank(dp_rank=dp_rank, stage=stage, tp_rank=tp_rank)

    def ep_group_of(self, rank: int) -> tuple[int, ...]:
        """The expert-parallel group of `rank`: the ranks of its stage with its expert data-parallel
        and expert tensor-parallel ranks. With etp = tp: its stage and tensor-parallel rank in
        each of `ep` consecutive data-parallel replicas."""
        expert_dp, _, expert_tp = self.expert_coords(rank)
        stage, etp = self.coords(rank)[1], self.expert_tp
        return tuple(self._stage_rank(stage, (expert_dp * self.ep + member) * etp + expert_tp) for member in range(self.ep))

    def expert_dp_group_of(self, rank: int) -> tuple[int, ...]:
        """The ranks holding the same experts and expert shard as `rank` (its place in every
        expert-parallel group): its expert gradients are reduced over these,
        tp × dp / (etp × ep) of them."""
        _, member, expert_tp = self.expert_coords(rank)
        stage, etp = self.coords(rank)[1], self.expert_tp
        groups = self.tp * self.dp // (etp * self.ep)
        return tuple(self._stage_rank(stage, (expert_dp * self.ep + member) * etp + expert_tp) for expert_dp in range(groups))

    def stage_ranks(self, stage: int) -> tuple[int, ...]:
        """Every rank of a pipeline stage, replica by replica."""
        return tuple(
            rank for d in range(self.dp) for c in range(self.cp) for rank in self.tp_group(dp_rank=d, stage=stage, cp_rank=c)
        )

    def attributes(self) -> MeshAttrs:
        """The mesh as the DAG's graph attributes carry it (`graph.graph["mesh"]`)."""
        attributes: MeshAttrs = {
            "tp": self.tp,
            "pp": self.pp,
            "dp": self.dp,
            "world": self.world,
            "microbatches": self.microbatches,
            "stages": [list(stage) for stage in self.stages],
            "schedule": self.schedule,
            "sequence_parallel": self.sequence_parallel,
            "grad_dtype": self.grad_dtype,
        }
        if self.ep > 1:  # absent means 1: DAGs without experts read as before
            attributes["ep"] = self.ep
        if self.cp > 1:  # absent means 1: DAGs without context parallelism read as before
            attributes["cp"] = self.cp
            attributes["cp_attention"] = self.cp_attention
        if self.recompute != "none":  # absent means none: DAGs without recomputation read as before
            attributes["recompute"] = self.recompute
        if self.chunks > 1:  # absent means 1: DAGs of contiguous stages read as before
            attributes["chunks"] = self.chunks
        if self.zero:  # absent means 0: DAGs without ZeRO read as before
            attributes["zero"] = self.zero
        return attributes

    @classmethod
    def from_attributes(cls, data: MeshAttrs) -> Mesh:
        """The inverse of `attributes`, for code that has only the DAG."""
        stages = tuple((first, last) for first, last in data["stages"])
        return cls(
            data["tp"],
            data["pp"],
            data["dp"],
            data["microbatches"],
            stages,
            data["schedule"],
            data["sequence_parallel"],
            data["grad_dtype"],
            ep=data.get("ep", 1),
            cp=data.get("cp", 1),
            cp_attention=data.get("cp_attention", "ring"),
            recompute=data.get("recompute", "none"),
            chunks=data.get("chunks", 1),
            zero=data.get("zero", 0),
        )


@dataclass(frozen=True, slots=True)
class Op:
    """One op of the block's dataflow, arguments evaluated.

    `name` is the value the op defines; `label` names a collective's node
    (`layer_0_allgather_<label>`). Collectives written with `place` get a fresh name.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    span: Span
    out_features: int | None = None
    style: str | None = None  # linear: column | row | replicated
    bias: bool = False  # linear: written with `bias`
    dim: str | None = None  # reducescatter / alltoall: seq | hidden
    label: str | None = None
    placed: bool = False  # written with a `place` statement rather than inline


@dataclass(frozen=True, slots=True)
class Block:
    """A block with its ops' arguments evaluated."""

    name: str
    param: str
    ops: tuple[Op, ...]
    result: str
    span: Span


@dataclass(frozen=True, slots=True)
class Hardware:
    """Device and link numbers for the step-time estimate; bandwidths are per direction."""

    name: str
    peak_tflops: float
    efficiency: float
    memory_gb: float
    devices_per_node: int
    intra_gbps: float
    intra_latency_us: float
    inter_gbps: float
    inter_latency_us: float
    hbm_gbps: float | None = None  # memory bandwidth (serving); None: a custom section without it


@dataclass(frozen=True, slots=True)
class Serve:
    """A serving deployment (`serve { ... }`): each of the model's `batch` sequences reads a
    prompt of `prompt` tokens (the prefill) and then generates `generate` tokens one at a time
    (the decode steps), keeping every position's K and V in a cache of `kv_dtype`."""

    prompt: int
    generate: int
    kv_dtype: Dtype

    @property
    def context(self) -> int:
        """Positions each sequence's KV cache holds: the prompt and every generated token."""
        return self.prompt + self.generate


@dataclass(frozen=True, slots=True)
class Deployment:
    """A spec checked whole: the model, mesh, block and hardware every later stage reads."""

    file: str
    name: str  # the spec's stem, used for output folders
    model: Model
    mesh: Mesh
    block: Block
    strict: bool
    hardware: Hardware | None
    # Where each setting came from, for diagnostics raised by later stages.
    spans: dict[str, Span] = field(default_factory=dict, compare=False, hash=False)
    # `model m : a 0..2, b 3..9`: (first layer, last layer, block) per range; empty: `block` everywhere.
    layer_blocks: tuple[tuple[int, int, Block], ...] = ()
    serve: Serve | None = None  # None: the spec trains

    def span_of(self, name: str) -> Span:
        return self.spans.get(name) or Span.point(self.file)
