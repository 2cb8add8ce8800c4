"""`par new --from-hf`: a spec from a transformers config.json, every unmapped setting an error.

The configs are written by transformers itself (`save_pretrained`), so the keys and their
layout are the library's, not ours.
"""

import json

import pytest

from par.cli import main
from par.dsl.frontend.parser import parse_with_comments
from par.hf_config import Mesh, spec_from_config

transformers = pytest.importorskip("transformers")


@pytest.fixture
def par(capsys):
    def run(*args):
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def saved(config, folder) -> str:
    config.save_pretrained(folder)
    return (folder / "config.json").read_text()


def model_settings(spec: str) -> dict[str, str]:
    parsed, _ = parse_with_comments(spec, "written.par")
    (model,) = parsed.models
    return {setting.name: _text(setting.value) for setting in model.settings}


def _text(value) -> str:
    return str(getattr(value, "value", getattr(value, "name", value)))


def llama(**changes):
    sizes = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                 vocab_size=101, max_position_embeddings=64, rms_norm_eps=1e-6)
    return transformers.LlamaConfig(**(sizes | changes))


def test_llama3_config_maps_every_size_and_the_rope_scaling(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
    text = saved(llama(rope_theta=500000.0, rope_scaling=scaling, tie_word_embeddings=True), tmp_path)
    spec, diagnostics = spec_from_config(text, "config.json", Mesh())
    assert diagnostics == []
    assert model_settings(spec) == {
        "layers": "3", "hidden": "32", "heads": "4", "kv_heads": "2", "ffn": "48", "vocab": "101",
        "norm_eps": "1e-06", "tie_embeddings": "true", "rope_theta": "500000", "rope_scaling": "llama3",
        "rope_factor": "8", "rope_low_freq_factor": "1", "rope_high_freq_factor": "4",
        "rope_original_max_positions": "32", "batch": "1", "seq": "64", "dtype": "fp32",
    }
    assert "model llama : llama {" in spec


def test_the_older_rope_theta_and_rope_scaling_keys_and_torch_dtype(tmp_path):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 128, "vocab_size": 256,
              "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "rope_theta": 1000.0,
              "rope_scaling": {"type": "linear", "factor": 2.0}, "torch_dtype": "bfloat16", "hidden_act": "silu"}
    spec, diagnostics = spec_from_config(json.dumps(config, indent=2), "config.json", Mesh(tp=2, dp=2, pp=2, sp=True))
    assert diagnostics == []
    settings = model_settings(spec)
    assert (settings["rope_scaling"], settings["rope_factor"], settings["rope_theta"]) == ("linear", "2", "1000")
    assert settings["dtype"] == "bf16" and settings["tie_embeddings"] == "false"
    assert "kv_heads" not in settings  # as many as the heads: the spec's default
    assert settings["batch"] == "4"  # dp 2 x microbatches 2 (pp)
    assert "mesh { tp 2  pp 2  dp 2  microbatches 2  sp }" in spec


def test_gpt2_has_learned_positions_and_tied_embeddings(tmp_path):
    text = saved(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=48), tmp_path)
    spec, diagnostics = spec_from_config(text, "config.json", Mesh(seq=16, dtype="fp32"))
    settings = model_settings(spec)
    assert settings == {
        "layers": "2", "hidden": "32", "heads": "4", "ffn": "128", "vocab": "99", "norm_eps": "1e-05",
        "tie_embeddings": "true", "positions": "learned", "max_positions": "48", "batch": "1", "seq": "16",
        "dtype": "fp32",
    }
    assert "model gpt2 : gpt2 {" in spec
    # GPT-2's dropouts are said, not silently dropped: par trains without dropout.
    assert sorted(d.message.split()[0] for d in diagnostics) == ["attn_pdrop", "embd_pdrop", "resid_pdrop"]
    assert all(d.severity == "warning" for d in diagnostics)


def test_qwen2_takes_the_qwen2_block(tmp_path):
    config = transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, vocab_size=100, rope_theta=1e6)
    spec, diagnostics = spec_from_config(saved(config, tmp_path), "config.json", Mesh())
    assert diagnostics == []
    assert "model qwen2 : qwen2 {" in spec and model_settings(spec)["rope_theta"] == "1000000"


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        (lambda: llama(attention_bias=True), "attention_bias", "attention_bias true: the llama block's Q, K, V"),
        (lambda: llama(mlp_bias=True), "mlp_bias", "mlp_bias true"),
        (lambda: llama(hidden_act="gelu"), "hidden_act", 'hidden_act "gelu"'),
        (lambda: llama(head_dim=16), "head_dim", "head_dim 16: par's head_dim is hidden / heads (hidden_size / num_attention_heads = 8)"),
        (lambda: llama(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
         "rope_type", 'rope_type "yarn" is not supported'),
        (lambda: transformers.MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                                            sliding_window=16),
         "sliding_window", "sliding_window 16"),
        (lambda: transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, use_sliding_window=True,
                                          sliding_window=8),
         "use_sliding_window", "use_sliding_window true"),
        (lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, activation_function="relu"),
         "activation_function", 'activation_function "relu"'),
        (lambda: transformers.OlmoConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
         "model_type", 'model_type "olmo" is not supported'),
        (lambda: transformers.MixtralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, router_jitter_noise=0.1),
         "router_jitter_noise", "router_jitter_noise 0.1: the router sees the hidden states as they are"),
    ],
)
def test_a_setting_the_block_does_not_compute_is_an_error_at_its_line(config, key, message, tmp_path, par):
    text = saved(config(), tmp_path)
    code, out, err = par("new", "--from-hf", tmp_path / "config.json", "--seq", "16")
    assert (code, out) == (1, "")
    line = next(number for number, found in enumerate(text.splitlines(), 1) if f'"{key}":' in found)
    first = err.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'config.json'}:{line}:") and " error: " in first, err
    assert message in err


def test_a_key_par_does_not_know_is_an_error_not_dropped(tmp_path, par):
    config = llama().to_dict() | {"quantization_config": {"bits": 4}, "partial_rotary_factor": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    code, out, err = par("new", "--from-hf", tmp_path)
    assert (code, out) == (1, "")
    assert 'quantization_config {"bits": 4}: not a setting par maps for model_type llama' in err
    assert "partial_rotary_factor 0.5: not a setting" in err


def test_bad_input_is_a_message_not_a_traceback(tmp_path, par):
    assert par("new", "--from-hf", tmp_path / "missing.json")[0] == 2
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": }')
    code, _, err = par("new", "--from-hf", tmp_path / "config.json")
    assert code == 1 and f"{tmp_path / 'config.json'}:2:18: error: not JSON" in err
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    code, _, err = par("new", "--from-hf", tmp_path / "config.json")
    assert code == 1 and "the config has no hidden_size (the spec's hidden)" in err


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "mistral", "mixtral"])
def test_the_spec_written_passes_par_check(tmp_path, par, family):
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                 vocab_size=99)
    config = {
        "llama": lambda: llama(vocab_size=99),
        "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64),
        "qwen2": lambda: transformers.Qwen2Config(**sizes),
        "mistral": lambda: transformers.MistralConfig(**sizes, head_dim=8, sliding_window=None),
        "mixtral": lambda: transformers.MixtralConfig(**sizes, num_local_experts=4, num_experts_per_tok=2),
    }[family]()
    saved(config, tmp_path)
    code, spec, _ = par("new", "--from-hf", tmp_path, "--tp", "2", "--pp", "2", "--sp", "--seq", "16")
    assert code == 0
    (tmp_path / "model.par").write_text(spec)
    assert par("check", tmp_path / "model.par")[0] == 0
    assert par("fmt", "--check", tmp_path / "model.par")[0] == 0


def test_a_mesh_the_model_does_not_divide_is_refused_and_nothing_is_written(tmp_path, par):
    saved(llama(), tmp_path)
    code, out, err = par("new", "--from-hf", tmp_path, "--tp", "3", "--seq", "16")
    assert (code, out) == (1, "")
    assert "error: heads (4) is not divisible by tp (3)" in err


def test_the_rope_mapping_covers_exactly_what_the_core_computes():
    """A scaling or setting added to the core (dsl/checks/rope.py) must be mapped here too, and
    nothing here may map to a setting the core does not read."""
    from par.dsl.checks.rope import NEEDS
    from par.hf_config import ROPE_SCALING, ROPE_TYPES

    assert set(ROPE_SCALING.values()) == set(NEEDS)
    for rope_type, keys in ROPE_TYPES.items():
        assert tuple(keys.values()) == NEEDS[ROPE_SCALING[rope_type]], rope_type


def test_mixtral_maps_its_experts_router_and_aux_loss(tmp_path, par):
    """The auxiliary loss is in the spec only where transformers' causal LM adds it to its loss
    (output_router_logits); pooled over several layers there, it is noted as differing from par's."""
    sizes = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, vocab_size=99,
                 num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02)
    saved(transformers.MixtralConfig(**sizes, num_hidden_layers=2, output_router_logits=True), tmp_path)
    code, spec, err = par("new", "--from-hf", tmp_path, "--seq", "16", "--dp", "4", "--ep", "2")
    assert code == 0
    assert "model mixtral : mixtral {" in spec and "mesh { tp 1  pp 1  dp 4  ep 2  microbatches 1 }" in spec
    assert "  experts 8  top_k 2  router_aux_loss_coef 0.02\n" in spec and "ffn 48" in spec
    assert "warning: output_router_logits true: transformers pools the routing of all layers" in err
    saved(transformers.MixtralConfig(**sizes, num_hidden_layers=1, output_router_logits=True), tmp_path)
    code, spec, err = par("new", "--from-hf", tmp_path, "--seq", "16")
    assert code == 0 and "router_aux_loss_coef 0.02" in spec and err == ""
    saved(transformers.MixtralConfig(**sizes, num_hidden_layers=2), tmp_path)  # output_router_logits false
    code, spec, err = par("new", "--from-hf", tmp_path, "--seq", "16")
    assert code == 0 and "  experts 8  top_k 2\n" in spec and "router_aux_loss_coef" not in spec and err == ""


def test_an_ep_the_data_parallel_degree_does_not_hold_is_refused(tmp_path, par):
    config = transformers.MixtralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=48, vocab_size=99, num_local_experts=4)
    saved(config, tmp_path)
    code, out, err = par("new", "--from-hf", tmp_path, "--seq", "16", "--dp", "2", "--ep", "4")
    assert (code, out) == (1, "") and err.count("error:") == 1 and "error: ep (4) does not divide dp (2)" in err
