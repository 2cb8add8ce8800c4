"""Limits: node budget, file size, nesting, and how many diagnostics a run prints."""

import re

import pytest

import par.dsl.compiler
import par.dsl.frontend.parser
import par.dsl.frontend.source
from par.cli import main
from par.dsl.compiler import compile_text
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.inputs import spec_name
from par.dsl.limits import (
    DEFAULT_MAX_DIAGNOSTICS,
    DEFAULT_MAX_NODES,
    MAX_BLOCK_OPS,
    MAX_NESTING,
    MAX_SEARCH_STATES,
    MAX_SPEC_BYTES,
)

# The gpt block on a tensor-parallel group: 10 compute nodes per rank and 2 AllReduces per layer.
GPT_COMPUTE, GPT_COLLECTIVES = 10, 2


def gpt_nodes(layers: int, tp: int, dp: int) -> int:
    return layers * dp * (GPT_COMPUTE * tp + GPT_COLLECTIVES) + 2  # and input, output


SMALL = "model m : gpt { layers 2  hidden 64  heads 4  batch 4  seq 8 }\nmesh { tp 2 }\n"
SMALL_NODES = gpt_nodes(2, 2, 1)
HUGE = [
    ("model m : gpt { layers 100000  hidden 4096  heads 1024  batch 1024  seq 8 }\nmesh { tp 1024  dp 1024 }\n", gpt_nodes(100_000, 1024, 1024)),
    ("model m : gpt { layers 2  hidden 65536  heads 65536  batch 1048576  seq 8 }\nmesh { tp 65536  dp 16 }\n", gpt_nodes(2, 65536, 16)),
]


def write(tmp_path, text, name="s.par"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def no_expansion(monkeypatch):
    def refuse(program):
        raise AssertionError("expanded a deployment over the node budget")

    monkeypatch.setattr(par.dsl.compiler, "expand", refuse)


@pytest.mark.parametrize("text, nodes", HUGE, ids=["layers_100000_tp_1024_dp_1024", "tp_65536_dp_16"])
def test_a_huge_mesh_is_refused_before_expansion_with_the_count_and_the_budget(tmp_path, capsys, no_expansion, text, nodes):
    path = write(tmp_path, text)
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert nodes > DEFAULT_MAX_NODES
    assert f"{spec_name(path)}:2:" in err.splitlines()[0]  # the mesh line
    assert f"{nodes:,} nodes" in err and f"node budget of {DEFAULT_MAX_NODES:,}" in err
    assert "--max-nodes" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["check"], ["cost"], ["explain", "@", "input"], ["build", "@", "-o", "OUT"]])
def test_every_compiling_command_takes_the_budget(tmp_path, capsys, command):
    path = write(tmp_path, SMALL)
    args = [path if a == "@" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    if "@" not in command:
        args.append(path)
    assert main([*args, "--max-nodes", str(SMALL_NODES - 1)]) == 1
    err = capsys.readouterr().err
    assert f"{SMALL_NODES:,} nodes, more than the node budget of {SMALL_NODES - 1:,}" in err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--max-nodes", str(SMALL_NODES)]) == 0


def test_raising_the_budget_compiles_what_the_default_refuses():
    text = "model m : gpt { layers 2  hidden 64  heads 4  batch 4  seq 8 }\nmesh { tp 4  dp 2 }\n"
    nodes = gpt_nodes(2, 4, 2)
    with pytest.raises(CompileError) as refused:
        compile_text(text, "b.par", max_nodes=nodes - 1)
    assert f"{nodes:,} nodes" in refused.value.diagnostics[0].message
    assert compile_text(text, "b.par", max_nodes=nodes).graph.number_of_nodes() == nodes


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_budget_is_a_usage_error(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["check", "specs", "--max-nodes", value])
    assert exit_.value.code == 2
    assert "--max-nodes" in capsys.readouterr().err


def test_a_spec_over_the_size_limit_is_refused_at_its_first_line(tmp_path, capsys):
    path = tmp_path / "big.par"
    path.write_bytes(b"#" * MAX_SPEC_BYTES + b"\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec_name(path)}:1:1: error: the file is {MAX_SPEC_BYTES + 1:,} bytes")
    assert f"at most {MAX_SPEC_BYTES:,} bytes" in err


def test_a_spec_at_the_size_limit_is_read(tmp_path, capsys):
    comment = "#" * (MAX_SPEC_BYTES - len(SMALL) - 1) + "\n"
    path = write(tmp_path, comment + SMALL)
    assert (tmp_path / "s.par").stat().st_size == MAX_SPEC_BYTES
    assert main(["check", path]) == 0


def nested(depth: int) -> str:
    # The model's own braces are one level.
    inner = depth - 1
    return f"model m : gpt {{ layers {'(' * inner}2{')' * inner}  hidden 64  heads 4  batch 4  seq 8 }}\n"


def test_brackets_nested_past_the_limit_are_refused_at_the_first_one_too_deep(tmp_path, capsys):
    assert main(["check", write(tmp_path, nested(MAX_NESTING))]) == 0
    path = write(tmp_path, "# ((((( in a comment does not count\n" + nested(MAX_NESTING + 1))
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    column = len("model m : gpt { layers ") + MAX_NESTING  # the bracket at depth MAX_NESTING + 1
    assert err.startswith(f"{spec_name(path)}:2:{column}: error: brackets nest more than {MAX_NESTING} deep")


def test_megabytes_of_brackets_are_refused_without_parsing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(par.dsl.frontend.parser, "_lark", lambda *a, **k: pytest.fail("parsed"))
    path = write(tmp_path, "model m : gpt { layers " + "(" * (MAX_SPEC_BYTES // 2) + "1" + ")" * (MAX_SPEC_BYTES // 2 - 30))
    assert main(["check", path]) == 1
    assert "brackets nest more than" in capsys.readouterr().err


def test_nesting_in_an_override_is_located_on_the_command_line(capsys):
    assert main(["check", "specs", "-D", "layers=" + "(" * (MAX_NESTING + 1) + "2" + ")" * (MAX_NESTING + 1)]) == 1
    err = capsys.readouterr().err
    assert f"<command line>:1:{len('layers=') + MAX_NESTING + 1}: error: brackets nest more than" in err


@pytest.mark.parametrize("command", ["check", "fmt"])
def test_an_expression_of_too_many_operators_is_an_error_not_a_crash(tmp_path, capsys, command):
    ok = write(tmp_path, f"model m : gpt {{ layers 1{' + 0' * MAX_NESTING}  hidden 64  heads 4  batch 4  seq 8 }}\n", "ok.par")
    assert main([command, ok]) == 0
    for chain in ("1" + " + 1" * 5000, "-" * 5000 + "1"):
        path = write(tmp_path, f"model m : gpt {{ layers {chain}  hidden 64  heads 4  batch 4  seq 8 }}\n")
        assert main([command, path]) == 1
        err = capsys.readouterr().err
        assert re.match(rf"{re.escape(spec_name(path))}:1:\d+: error: expression has more than {MAX_NESTING} levels of operators\n", err)


def many_errors(count: int) -> str:
    """A spec with `count` errors, one per line: places after ops the block does not have."""
    return SMALL + "".join(f"place allreduce after missing_{i}\n" for i in range(count))


def headlines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.match(r"^\S+:\d+:\d+: (error|warning): ", line)]


def test_printing_many_diagnostics_splits_the_file_once(tmp_path, capsys, monkeypatch):
    calls = []
    split = par.dsl.frontend.source.split_lines
    monkeypatch.setattr(par.dsl.frontend.source, "split_lines", lambda text: calls.append(len(text)) or split(text))
    path = write(tmp_path, many_errors(2000))
    assert main(["check", path, "--max-diagnostics", "5000"]) == 1
    err = capsys.readouterr().err
    assert len(headlines(err)) == 2000
    assert calls == [len(many_errors(2000))]
    assert "place allreduce after missing_1999" in err  # each quoted line is its own


def test_at_most_the_cap_is_printed_then_how_many_more(tmp_path, capsys):
    path = write(tmp_path, many_errors(300))
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert len(headlines(err)) == DEFAULT_MAX_DIAGNOSTICS
    assert err.rstrip().endswith(f"par: ... and {300 - DEFAULT_MAX_DIAGNOSTICS} more diagnostics (at most {DEFAULT_MAX_DIAGNOSTICS} are printed; --max-diagnostics N prints more)")
    assert f"{spec_name(path)}:3:" in headlines(err)[0]  # the first ones, in order


def test_the_cap_holds_across_the_specs_of_a_run(tmp_path, capsys):
    first, second = write(tmp_path, many_errors(7), "a.par"), write(tmp_path, many_errors(7), "b.par")
    assert main(["check", first, second, "--max-diagnostics", "10"]) == 1
    err = capsys.readouterr().err
    shown = headlines(err)
    assert len(shown) == 10
    assert sum(first in line for line in shown) == 7 and sum(second in line for line in shown) == 3
    assert "par: ... and 4 more diagnostics" in err


def test_errors_come_before_warnings_when_not_all_fit(tmp_path, capsys):
    text = (
        "model m : gpt { layers 4  hidden 64  heads 4  batch 8  seq 8 }\n"
        "mesh { pp 2 }\n"  # one microbatch on two stages: a pipeline-bubble warning
        "place allreduce after missing\n"
    )
    path = write(tmp_path, text)
    assert main(["check", path, "--max-diagnostics", "5"]) == 1
    assert any(": warning: " in line for line in headlines(capsys.readouterr().err))
    assert main(["check", path, "--max-diagnostics", "1"]) == 1
    err = capsys.readouterr().err
    assert [line.split(": ", 2)[1] for line in headlines(err)] == ["error"]
    assert "par: ... and 1 more diagnostic (" in err


def chain_block(ops: int) -> str:
    body = "".join(f"  a{i} = gelu({'x' if i == 0 else f'a{i - 1}'})\n" for i in range(ops))
    return f"block b(x) {{\n{body}  return a{ops - 1}\n}}\n"


def test_a_block_of_more_ops_than_the_limit_is_refused_at_its_line(tmp_path, capsys):
    head = "model m : b { layers 1  hidden 64  heads 4  batch 4  seq 8 }\nmesh { tp 2 }\n"
    assert main(["check", write(tmp_path, head + chain_block(MAX_BLOCK_OPS))]) == 0
    path = write(tmp_path, head + chain_block(MAX_BLOCK_OPS + 1))
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec_name(path)}:3:1: error: block 'b' has {MAX_BLOCK_OPS + 1} ops; par places blocks of at most {MAX_BLOCK_OPS}")


def test_a_block_whose_placement_search_explodes_is_refused(tmp_path, capsys):
    # Ten column-parallel values kept alive until the end: each may be used split or gathered,
    # so the search would try about 3^10 combinations.
    live = 10
    body = "  n = layernorm(x)\n" + "".join(f"  c{i} = linear(n, hidden, column)\n  g{i} = gelu(c{i})\n" for i in range(live))
    body += "".join(f"  s{i} = mul({'g0' if i == 1 else f's{i - 1}'}, g{i})\n" for i in range(1, live))
    body += f"  o = linear(s{live - 1}, hidden, row)\n  out = add(x, o)\n"
    text = "model m : b { layers 1  hidden 64  heads 4  batch 4  seq 8 }\nmesh { tp 2 }\n" + f"block b(x) {{\n{body}  return out\n}}\n"
    path = write(tmp_path, text)
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec_name(path)}:3:1: error: placing block 'b' takes more than {MAX_SEARCH_STATES:,} search states")


def test_running_out_of_memory_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A budget raised past what the machine holds ends in a clear error."""
    path = write(tmp_path, "model m : gpt { layers 1  hidden 64  heads 4  batch 4  seq 8 }\n")

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(par.dsl.compiler, "expand", exhausted)
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith("par: error: out of memory") and "Traceback" not in err
