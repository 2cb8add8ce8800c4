"""Which specs get --load and --save: the built-in llama, qwen2, mixtral and gpt2 blocks, whose parameters
all have Hugging Face names; any other block, or a block shadowing one with other steps, none."""


from small_models import compile_source

from par.codegen.pytorch.emit import emit_model

SIZES = "layers 2  hidden 32  heads 4  ffn 64  vocab 64  batch 2  seq 8  dtype fp32"


def test_llama_gets_the_table_of_its_parameters_and_the_options():
    text = emit_model(compile_source(f"model m : llama {{ {SIZES} }}\nmesh {{ tp 2 }}\n"))
    assert '"embed.weight": ("model.embed_tokens.weight",),' in text
    assert '        "model.layers.{i}.self_attn.k_proj.weight",' in text  # a part of the fused qkv
    assert '"head.weight": ("lm_head.weight",),' in text and "TRANSPOSED = ()" in text
    assert '"--load"' in text and '"--save"' in text


def test_gpt2_tied_has_no_head_and_its_conv1d_weights_are_transposed():
    text = emit_model(compile_source(f"model m : gpt2 {{ {SIZES}  tie_embeddings true  positions learned }}\n"))
    table = text[text.index("CHECKPOINT = {") :]
    table = table[: table.index("\n}\n")]
    assert '"pos_embed.weight": ("transformer.wpe.weight",),' in table and "head.weight" not in table
    assert 'TRANSPOSED = ("layers.{i}.qkv.weight", "layers.{i}.attn.weight", "layers.{i}.fc1.weight", "layers.{i}.mlp.weight")' in text


def test_mixtral_names_one_checkpoint_tensor_per_expert():
    text = emit_model(compile_source(f"model m : mixtral {{ {SIZES}  experts 4  top_k 2 }}\nmesh {{ dp 2  ep 2 }}\n"))
    assert '"layers.{i}.moe_router.weight": ("model.layers.{i}.block_sparse_moe.gate.weight",),' in text
    assert '"layers.{i}.moe_down.weight": ("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight",),' in text
    assert "# {e} is an expert's index in the model" in text and '"--load"' in text


def test_other_blocks_have_no_checkpoint_code():
    shadowed = f"""model m : llama {{ {SIZES} }}
block llama(x) {{
  n   = rmsnorm(x)
  fc  = linear(n, hidden, replicated)
  out = add(x, fc)
  return out
}}
"""
    for spec in (f"model m : gpt {{ {SIZES} }}\n", shadowed):
        text = emit_model(compile_source(spec))
        assert "CHECKPOINT" not in text and "--load" not in text and "safetensors" not in text
