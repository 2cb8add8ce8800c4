"""model.py's generation options: what does not fit is a usage error naming the option, before
any process group exists."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from par.codegen.pytorch.runtime import cli  # noqa: E402


@pytest.fixture
def model(monkeypatch):
    """A model with a vocabulary of 50, seq 16, on tp 2 with sequence parallelism."""
    for name, value in {"ENDS": True, "GENERATES": True, "SEQ": 16, "VOCAB": 50, "TP": 2, "SEQUENCE_PARALLEL": True}.items():
        monkeypatch.setattr(cli, name, value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--generate", "1 2", "--prompt-len", "2"], "not both"),
        (["--generate", "1 x"], "token ids separated by spaces"),
        (["--generate", "1 50"], "each from 0 to 49"),
        (["--prompt-len", "8", "--max-new", "9"], "exceed seq (16)"),
        (["--prompt-len", "3"], "give a multiple of 2 ids"),
        (["--prompt-len", "0"], "at least 1"),
        (["--prompt-len", "2", "--max-new", "0"], "--max-new must be at least 1"),
        (["--prompt-len", "2", "--top-k", "5"], "--top-k needs a temperature above 0"),
        (["--prompt-len", "2", "--temperature", "1", "--top-k", "51"], "1 <= K <= 50"),
        (["--prompt-len", "2", "--save", "out"], "--save writes the weights after training"),
    ],
)
def test_options_that_do_not_fit_are_usage_errors(model, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_generation_options_that_fit(model):
    args = cli.parse_args(["--prompt-len", "4", "--max-new", "4", "--temperature", "0.7", "--top-k", "5"])
    assert (args.prompt, args.length, args.max_new, args.top_k) == (None, 4, 4, 5)
    args = cli.parse_args(["--generate", "3 4", "--kv-dtype", "bf16"])
    assert (args.prompt, args.length, args.kv_dtype) == ([3, 4], 2, "bf16")


def test_a_model_trained_interleaved_offers_no_generation(model, monkeypatch, capsys):
    """Generation runs each stage's layers in one piece: under the interleaved schedule
    (GENERATES false) --generate is no option of model.py."""
    monkeypatch.setattr(cli, "GENERATES", False)
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(["--generate", "1 2"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --generate" in capsys.readouterr().err
