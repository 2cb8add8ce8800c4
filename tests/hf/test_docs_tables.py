"""docs/huggingface.md and docs/pytorch.md list what the mapping tables hold (par/hf_config.py, codegen/pytorch/checkpoint.py)."""

from pathlib import Path

from par.codegen.pytorch.checkpoint import LAYOUTS
from par.hf_config import FAMILIES, GENERAL, Ignore

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_config_key_that_maps_or_is_required_is_in_docs_huggingface():
    text = (DOCS / "huggingface.md").read_text()
    for model_type, family in FAMILIES.items():
        assert f"`{model_type}` | `{family.block}` | `{family.architecture}`" in text
        for key, rule in family.rules.items():
            if key not in GENERAL and not isinstance(rule, Ignore) or key == "pretraining_tp":
                assert f"`{key}`" in text, key


def test_every_checkpoint_name_is_in_the_table_of_docs_pytorch():
    text = (DOCS / "pytorch.md").read_text()
    table = text[text.index("| our parameter |") :]
    table = table[: table.index("\n\n")]
    for layout in LAYOUTS.values():
        for ours, source in layout.items():
            stem = ours.rsplit(".", 1)[0]
            assert f"`{ours}`" in table or f"`{stem}.weight` (`.bias`)" in table, ours
            for name in source.names:
                short = ".".join(name.rsplit(".", 2)[-2:])
                assert f"`{name}`" in table or f"`{short}`" in table or f"{name.rsplit('.', 1)[0]}.weight` (`.bias`)" in table, name
