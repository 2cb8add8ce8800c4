"""The command line: exit codes, output, and no traceback for anything a user can type."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from par.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = "model m : gpt { layers 4  hidden 64  heads 4  ffn 256  batch 8  seq 16  dtype fp32 }\nmesh { tp 2  pp 2  microbatches 2 }\n"


def par(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "par", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)


def test_check_the_shipped_specs():
    result = par("check", "specs")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(list((ROOT / "specs").glob("*.par")))


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["check", "missing.par"], 2, "missing.par: no such file or folder"),
        (["check", "-D", "tp", "specs"], 2, "-D expects name=value"),
        (["bogus"], 2, "invalid choice"),
        ([], 2, "usage"),
        (["check", "specs", "-D", "hidden=63"], 1, "hidden (63) is not divisible by heads"),
    ],
)
def test_exit_codes(args, code, words):
    result = par(*args)
    assert result.returncode == code
    assert words in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a fresh `python -m par` per input; test_fuzz covers the same in-process
@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00\x01", b"model m : gpt {" * 3, b"(" * 20000, b"model \xc3\xa9 : gpt { }", b"\t\n\r\x0b"],
)
def test_no_traceback_on_bad_files(tmp_path, content):
    path = tmp_path / "bad.par"
    path.write_bytes(content)
    result = par("check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and f"{path}:" in result.stderr


def test_fmt_check_and_write(tmp_path, capsys):
    path = tmp_path / "x.par"
    path.write_text("model m : gpt {layers=4,hidden 64 heads 4 ffn 256 batch 8 seq 16 dtype fp32}  # note\n")
    assert main(["fmt", "--check", str(path)]) == 1
    assert main(["fmt", "--write", str(path)]) == 0
    assert path.read_text() == "model m : gpt { layers 4  hidden 64  heads 4  ffn 256  batch 8  seq 16  dtype fp32 }  # note\n"
    assert main(["fmt", "--check", str(path)]) == 0
    capsys.readouterr()


def test_shipped_specs_and_library_are_formatted():
    assert main(["fmt", "--check", str(ROOT / "specs"), str(ROOT / "dsl" / "frontend" / "library" / "blocks.par")]) == 0


def test_explain_says_why(capsys):
    assert main(["explain", str(ROOT / "specs" / "megatron_tp8_pp2.par"), "layer_3_allreduce_attn"]) == 0
    out = capsys.readouterr().out
    assert "P -> R is an AllReduce" in out and "gpu 0-7" in out and "h    = add(x, attn)" in out
    assert main(["explain", str(ROOT / "specs" / "megatron_tp8_pp2.par"), "layer_3_allreduce_atn"]) == 1
    assert "did you mean layer_3_allreduce_attn" in capsys.readouterr().err


def test_explain_says_why_a_gathers_backward_sends_nothing(capsys):
    assert main(["explain", str(ROOT / "specs" / "baseline_tp8_pp2.par"), "layer_5_allgather_qkv"]) == 0
    backward = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("backward:")]
    assert len(backward) == 1
    assert "nothing sent" in backward[0] and "attention" in backward[0] and "slice_ctx" in backward[0]
    assert "instead of a ReduceScatter" in backward[0]


def test_works_from_any_directory(tmp_path):
    spec = tmp_path / "m.par"
    spec.write_text(GOOD)
    result = subprocess.run(
        [sys.executable, "-m", "par", "check", "m.par"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr


def test_output_folders_are_named_like_the_deployment(tmp_path, capsys):
    # Two specs whose names differ only after the stem build side by side, each into its own folder.
    (tmp_path / "a.par").write_text(GOOD)
    (tmp_path / "a.txt").write_text(GOOD)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "a.par"), str(tmp_path / "a.txt"), "-o", str(out)]) == 0
    assert (out / "a" / "dag.json").exists() and (out / "a.txt" / "dag.json").exists()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.par").write_text(GOOD)
    assert main(["build", str(tmp_path / "a.par"), str(tmp_path / "sub" / "a.par"), "-o", str(out)]) == 2
    assert "would both build into <OUT>/a/" in capsys.readouterr().err


def test_compile_file_reads_specs_as_par_check_does(tmp_path):
    from par.dsl.compiler import compile_file

    path = tmp_path / "bom.par"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert main(["check", str(path)]) == 0
    assert compile_file(path).deployment.name == "bom"
