"""A transformers `config.json` as a .par spec (`par new --from-hf`).

`FAMILIES` is the one table of what each Hugging Face setting becomes: a model setting of the
spec (`Setting`), a value the built-in block computes and the config must hold (`Require`),
something that does not change the weights or the forward (`Ignore`), or dropout, which the
generated code does not apply (`Dropout`: said on stderr, not an error). A key the table does
not know, a required value the config does not hold, or a RoPE variant par does not compute is
an error at its line of the file: nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from par.dsl.diagnostics import Diagnostic, error, warning
from par.dsl.frontend.source import Span


@dataclass(frozen=True, slots=True)
class Setting:
    """The key's value is the spec's model setting `name`; `default` stands for a null or absent key."""

    name: str
    default: Callable[[dict], object] | None = None
    when: str | None = None  # read only where the config's key `when` is true; the setting is left out otherwise


@dataclass(frozen=True, slots=True)
class Require:
    """The block computes only these values of the key (an absent key takes the first)."""

    values: tuple[object, ...]
    why: str


@dataclass(frozen=True, slots=True)
class Check:
    """The key's value must pass `test(value, config)`, which says what it expected when it does not."""

    test: Callable[[object, dict], str | None]
    why: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """A config key that changes nothing par computes, with why."""

    why: str


@dataclass(frozen=True, slots=True)
class Dropout:
    """A dropout probability: the generated code trains without dropout; a non-zero one is noted."""


Rule = Setting | Require | Check | Ignore | Dropout

ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters")


@dataclass(frozen=True, slots=True)
class Family:
    """A transformers model_type: the block that computes it, its checkpoints' class and how each key is read."""

    block: str
    architecture: str  # the transformers class whose checkpoints the block loads
    rules: dict[str, Rule]
    rope: bool  # rotary positions: rope_theta and rope_scaling (or rope_parameters) are read
    defaults: dict[str, object] = field(default_factory=dict)  # the config class's defaults of optional keys


def _heads(config: dict) -> object:
    return config.get("num_attention_heads")


def _head_dim(value: object, config: dict) -> str | None:
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if value is None or not isinstance(hidden, int) or not isinstance(heads, int) or not heads:
        return None
    return None if value == hidden // heads else f"hidden_size / num_attention_heads = {hidden // heads}"


def _full_attention(value: object, config: dict) -> str | None:
    others = sorted({str(kind) for kind in value or () if kind != "full_attention"}) if isinstance(value, list) else ["?"]
    return f"full_attention in every layer, not {', '.join(others)}" if others else None


def _no_jitter(value: object, config: dict) -> str | None:
    return None if value in (0, None) else "no multiplicative jitter noise: 0"


# Keys of every transformers config that do not change the weights or the forward pass.
GENERAL = {
    key: Ignore("bookkeeping, tokens or generation defaults: no effect on the weights or the forward pass")
    for key in (
        "_name_or_path", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
        "initializer_range", "use_cache", "output_attentions", "output_hidden_states", "return_dict", "id2label",
        "label2id", "problem_type", "chunk_size_feed_forward", "tokenizer_class", "task_specific_params",
    )
} | {
    "is_encoder_decoder": Require((False,), "par builds decoder-only models"),
    "add_cross_attention": Require((False,), "the block has no cross-attention"),
}
SILU = Require(("silu", "swish"), "the block's MLP is SwiGLU: silu(gate) * up")
CONTEXT = Ignore("the context length: the spec's seq unless --seq says otherwise")

_LLAMA_COMMON: dict[str, Rule] = {
    "vocab_size": Setting("vocab"),
    "hidden_size": Setting("hidden"),
    "num_hidden_layers": Setting("layers"),
    "num_attention_heads": Setting("heads"),
    "num_key_value_heads": Setting("kv_heads", _heads),
    "intermediate_size": Setting("ffn"),
    "rms_norm_eps": Setting("norm_eps"),
    "tie_word_embeddings": Setting("tie_embeddings"),
    "head_dim": Check(_head_dim, "par's head_dim is hidden / heads"),
    "hidden_act": SILU,
    "max_position_embeddings": CONTEXT,
    "attention_dropout": Dropout(),
}

FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama",
        "LlamaForCausalLM",
        _LLAMA_COMMON
        | {
            "attention_bias": Require((False,), "the llama block's Q, K, V and output projections have no bias"),
            "mlp_bias": Require((False,), "the llama block's MLP linears have no bias"),
            "pretraining_tp": Ignore("how Meta's training split the matmuls: the same math"),
        },
        rope=True,
        defaults={"tie_word_embeddings": False},
    ),
    "mistral": Family(
        "llama",
        "MistralForCausalLM",
        _LLAMA_COMMON | {"sliding_window": Require((None,), "par's attention is full causal attention, not a sliding window")},
        rope=True,
        defaults={"tie_word_embeddings": False},
    ),
    "qwen2": Family(
        "qwen2",
        "Qwen2ForCausalLM",
        _LLAMA_COMMON
        | {
            "use_sliding_window": Require((False,), "par's attention is full causal attention, not a sliding window"),
            "sliding_window": Ignore("read only with use_sliding_window"),
            "max_window_layers": Ignore("read only with use_sliding_window"),
            "layer_types": Check(_full_attention, "every layer of the block is full causal attention"),
        },
        rope=True,
        defaults={"tie_word_embeddings": False},
    ),
    "mixtral": Family(
        "mixtral",
        "MixtralForCausalLM",
        _LLAMA_COMMON
        | {
            "intermediate_size": Setting("ffn"),  # each expert's; the block's expert_ffn is ffn
            "num_local_experts": Setting("experts"),
            "num_experts_per_tok": Setting("top_k"),
            # transformers' causal LM adds the load-balancing loss to its loss only with output_router_logits
            "router_aux_loss_coef": Setting("router_aux_loss_coef", when="output_router_logits"),
            "output_router_logits": Ignore("read with router_aux_loss_coef: whether the training loss has the auxiliary loss"),
            "router_jitter_noise": Check(_no_jitter, "the router sees the hidden states as they are"),
            "sliding_window": Require((None,), "par's attention is full causal attention, not a sliding window"),
        },
        rope=True,
        defaults={"tie_word_embeddings": False, "router_aux_loss_coef": 0.001},
    ),
    "gpt2": Family(
        "gpt2",
        "GPT2LMHeadModel",
        {
            "vocab_size": Setting("vocab"),
            "n_embd": Setting("hidden"),
            "n_layer": Setting("layers"),
            "n_head": Setting("heads"),
            "n_inner": Setting("ffn", lambda config: 4 * config["n_embd"] if isinstance(config.get("n_embd"), int) else None),
            "layer_norm_epsilon": Setting("norm_eps"),
            "n_positions": Setting("max_positions"),
            "tie_word_embeddings": Setting("tie_embeddings"),
            "n_ctx": Ignore("an older name of n_positions"),
            "activation_function": Require(("gelu_new", "gelu_pytorch_tanh"), "the gpt2 block's GELU is the tanh approximation"),
            "scale_attn_weights": Require((True,), "attention scores are scaled by 1 / sqrt(head_dim)"),
            "scale_attn_by_inverse_layer_idx": Require((False,), "attention scores are not scaled by layer"),
            "reorder_and_upcast_attn": Ignore("the precision of attention's matmul, not its math"),
            "resid_pdrop": Dropout(),
            "embd_pdrop": Dropout(),
            "attn_pdrop": Dropout(),
            "summary_type": Ignore("the sequence-summary head of GPT2DoubleHeadsModel, not in a causal LM checkpoint"),
            "summary_use_proj": Ignore("the sequence-summary head of GPT2DoubleHeadsModel"),
            "summary_activation": Ignore("the sequence-summary head of GPT2DoubleHeadsModel"),
            "summary_proj_to_labels": Ignore("the sequence-summary head of GPT2DoubleHeadsModel"),
            "summary_first_dropout": Ignore("the sequence-summary head of GPT2DoubleHeadsModel"),
        },
        rope=False,
        defaults={"tie_word_embeddings": True},
    ),
}
# model_type -> the block that computes it. A model_type missing here is an error naming these.
SUPPORTED = tuple(FAMILIES)

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# RoPE variants par computes (the same formulas as transformers' rope_init_fns), and the keys
# each reads: rope_parameters' key -> the spec's setting.
ROPE_TYPES: dict[str, dict[str, str]] = {
    "default": {},
    "linear": {"factor": "rope_factor"},
    "llama3": {
        "factor": "rope_factor",
        "low_freq_factor": "rope_low_freq_factor",
        "high_freq_factor": "rope_high_freq_factor",
        "original_max_position_embeddings": "rope_original_max_positions",
    },
}
ROPE_SCALING = {"default": "none", "linear": "linear", "llama3": "llama3"}


@dataclass(frozen=True, slots=True)
class Mesh:
    """The deployment `par new` writes around the model (its command-line options)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    sp: bool = False
    microbatches: int | None = None  # default: pp
    batch: int | None = None  # default: dp x microbatches
    seq: int | None = None  # default: the model's context length
    dtype: str | None = None  # default: the config's dtype
    name: str | None = None  # default: the model_type
    ep: int = 1  # expert parallelism: experts spread over groups of ep data-parallel replicas


@dataclass
class Reading:
    """A config.json being read: its text (to place diagnostics) and what was found."""

    file: str
    text: str
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def span(self, key: str, inside: str | None = None) -> Span:
        """Where `"key":` first appears (after `"inside":` when given); the file's start if nowhere."""
        start = 0
        if inside is not None:
            found = re.search(rf'"{re.escape(inside)}"\s*:', self.text)
            start = found.end() if found else 0
        found = re.compile(rf'"{re.escape(key)}"\s*:').search(self.text, start)
        if found is None:
            return Span.point(self.file)
        line = self.text.count("\n", 0, found.start()) + 1
        col = found.start() - (self.text.rfind("\n", 0, found.start()) + 1) + 1
        return Span(self.file, line, col, line, col + len(key) + 2)

    def error(self, message: str, key: str | None = None, *, inside: str | None = None, hint: str | None = None) -> None:
        span = self.span(key, inside) if key is not None else Span.point(self.file)
        self.diagnostics.append(error(message, span, hint=hint))

    def note(self, message: str, key: str) -> None:
        self.diagnostics.append(warning(message, self.span(key)))


def spec_from_config(text: str, file: str, mesh: Mesh) -> tuple[str | None, list[Diagnostic]]:
    """The spec text for a config.json's text, or None, with every diagnostic."""
    reading = Reading(file, text)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        reading.diagnostics.append(error(f"not JSON: {exc.msg}", Span.point(file, exc.lineno, exc.colno)))
        return None, reading.diagnostics
    if not isinstance(config, dict):
        reading.error("a transformers config.json holds one JSON object")
        return None, reading.diagnostics
    settings = _model_settings(config, reading, mesh)
    if any(diagnostic.is_error for diagnostic in reading.diagnostics) or settings is None:
        return None, reading.diagnostics
    return _spec_text(settings, config, mesh), reading.diagnostics


def _model_settings(config: dict, reading: Reading, mesh: Mesh) -> dict[str, object] | None:
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        reading.error(
            f"model_type {json.dumps(model_type)} is not supported",
            "model_type" if "model_type" in config else None,
            hint=f"par new --from-hf reads the model types {', '.join(SUPPORTED)}",
        )
        return None
    settings: dict[str, object] = {}
    rules = GENERAL | family.rules
    handled = {"model_type", "architectures", "dtype", "torch_dtype", *(ROPE_KEYS if family.rope else ())}
    for key, value in config.items():
        if key in handled:
            continue
        rule = rules.get(key)
        if rule is None:
            reading.error(
                f"{key} {json.dumps(value)}: not a setting par maps for model_type {model_type}",
                key,
                hint="the generated spec would not compute it; remove it from the config if it does not change the model",
            )
        elif isinstance(rule, Setting) and rule.when is not None and not config.get(rule.when):
            continue
        elif isinstance(rule, Setting):
            if value is None and rule.default is not None:
                value = rule.default(config)
            settings[rule.name] = value
        elif isinstance(rule, Require) and (value not in rule.values or type(value) is not type(rule.values[0])):
            wanted = " or ".join(json.dumps(option) for option in rule.values)  # type(): true is not 1
            reading.error(f"{key} {json.dumps(value)}: {rule.why} (it maps only {wanted})", key)
        elif isinstance(rule, Check) and (problem := rule.test(value, config)) is not None:
            reading.error(f"{key} {json.dumps(value)}: {rule.why} ({problem})", key)
        elif isinstance(rule, Dropout) and value not in (0, 0.0, None):
            reading.note(f"{key} {value}: par trains without dropout", key)
    for key, rule in family.rules.items():
        if isinstance(rule, Setting) and rule.name not in settings and (rule.when is None or config.get(rule.when)):
            if key in family.defaults:
                settings[rule.name] = family.defaults[key]
            elif rule.default is not None and rule.default(config) is not None:
                settings[rule.name] = rule.default(config)
            else:
                reading.error(f"the config has no {key} (the spec's {rule.name})")
    _architecture(config, family, reading)
    layers = settings.get("layers")
    if settings.get("router_aux_loss_coef") and isinstance(layers, int) and layers > 1:
        reading.note(
            "output_router_logits true: transformers pools the routing of all layers into one load-balancing loss, "
            "par adds each layer's own (Switch Transformer's, as Megatron does): the same loss for one layer only",
            "output_router_logits",
        )
    settings["dtype"] = mesh.dtype or _dtype(config, reading)
    if family.rope:
        settings |= _rope(config, reading)
    else:
        settings["positions"] = "learned"
    _check_values(settings, config, reading, family, mesh)
    return settings


def _architecture(config: dict, family: Family, reading: Reading) -> None:
    found = config.get("architectures")
    if found is None:
        return
    if not isinstance(found, list) or family.architecture not in found:
        reading.error(
            f"architectures {json.dumps(found)}: par loads {family.architecture} checkpoints "
            "(the causal language model with its LM head)",
            "architectures",
        )


def _dtype(config: dict, reading: Reading) -> str:
    key = "dtype" if "dtype" in config else "torch_dtype"
    value = config.get(key)
    if value is None:
        return "fp32"  # transformers builds the model in float32 when the config names no dtype
    if value not in DTYPES:
        reading.error(f"{key} {json.dumps(value)}: par computes in {', '.join(DTYPES)}", key, hint="or give --dtype")
        return "fp32"
    return DTYPES[value]


def _rope(config: dict, reading: Reading) -> dict[str, object]:
    """rope_theta and the scaling settings, from transformers 5's rope_parameters or the older
    rope_theta and rope_scaling keys."""
    if config.get("rope_parameters") is not None:
        where, parameters = "rope_parameters", dict(config["rope_parameters"])
    else:
        where, parameters = "rope_scaling", dict(config.get("rope_scaling") or {})
        if "rope_theta" in config:
            parameters["rope_theta"] = config["rope_theta"]
    if not isinstance(parameters, dict):
        reading.error(f"{where}: expected an object", where)
        return {}
    rope_type = parameters.pop("rope_type", parameters.pop("type", "default"))
    theta = parameters.pop("rope_theta", 10000.0)
    settings: dict[str, object] = {"rope_theta": theta}
    reads = ROPE_TYPES.get(rope_type) if isinstance(rope_type, str) else None
    if reads is None:
        reading.error(
            f"rope_type {json.dumps(rope_type)} is not supported",
            "rope_type" if '"rope_type"' in reading.text else "type",
            inside=where,
            hint=f"par computes RoPE of the types {', '.join(ROPE_TYPES)}",
        )
        return settings
    settings["rope_scaling"] = ROPE_SCALING[rope_type]
    for key, value in parameters.items():
        if key in reads:
            settings[reads[key]] = value
        else:
            reading.error(f"{where}.{key} {json.dumps(value)}: not a parameter of rope_type {rope_type}", key, inside=where)
    for key, name in reads.items():
        if name not in settings:
            reading.error(f"{where} has no {key} (rope_type {rope_type})", where)
    return settings


INTEGERS = (
    "layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "max_positions", "rope_original_max_positions", "experts", "top_k",
)
NUMBERS = ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")


def _check_values(settings: dict[str, object], config: dict, reading: Reading, family: Family, mesh: Mesh) -> None:
    keys = {rule.name: key for key, rule in family.rules.items() if isinstance(rule, Setting)}
    for name, value in settings.items():
        key = keys.get(name, name)
        where = key if f'"{key}"' in reading.text else None
        if name in INTEGERS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            reading.error(f"{key} {json.dumps(value)}: expected a whole number of at least 1", where)
        elif name in NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            reading.error(f"{key} {json.dumps(value)}: expected a positive number", where)
        elif name == "tie_embeddings" and not isinstance(value, bool):
            reading.error(f"{key} {json.dumps(value)}: expected true or false", where)
    if mesh.seq is None and _context(settings, config) is None:
        reading.error("the config has no max_position_embeddings for the spec's seq", hint="give --seq N")


def _context(settings: dict[str, object], config: dict) -> object:
    """The model's context length: the default seq."""
    return settings.get("max_positions") or config.get("max_position_embeddings")


# -- Writing the spec -------------------------------------------------------------------------------

# The model settings in the order the spec writes them, one line per group.
LINES = (
    ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab"),
    ("experts", "top_k", "router_aux_loss_coef"),
    ("norm_eps", "tie_embeddings", "positions", "max_positions"),
    ("rope_theta", "rope_scaling", "rope_factor"),
    ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions"),
    ("batch", "seq", "dtype"),
)


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _spec_text(settings: dict[str, object], config: dict, mesh: Mesh) -> str:
    family = FAMILIES[config["model_type"]]
    microbatches = mesh.microbatches or mesh.pp
    settings = settings | {
        "seq": mesh.seq or _context(settings, config),
        "batch": mesh.batch or mesh.dp * microbatches,
    }
    if settings.get("kv_heads") == settings.get("heads"):
        del settings["kv_heads"]
    name = mesh.name or re.sub(r"\W", "_", config["model_type"])
    lines = [
        f"# A {family.architecture} from its Hugging Face config.json (par new --from-hf).",
        f"model {name} : {family.block} {{",
    ]
    for group in LINES:
        parts = [f"{key} {_number(settings[key])}" for key in group if key in settings]
        if parts:
            lines.append("  " + "  ".join(parts))
    lines.append("}")
    mesh_parts = [f"tp {mesh.tp}", f"pp {mesh.pp}", f"dp {mesh.dp}", *([f"ep {mesh.ep}"] if mesh.ep > 1 else [])]
    mesh_parts.append(f"microbatches {microbatches}")
    lines.append(f"mesh {{ {'  '.join(mesh_parts + (['sp'] if mesh.sp else []))} }}")
    return "\n".join(lines) + "\n"
