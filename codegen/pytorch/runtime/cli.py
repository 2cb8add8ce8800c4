"""The entry point: arguments, the process group, and the modes (`--check`, `--steps`)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.batches import open_tokens
from par.codegen.pytorch.runtime.checkpoint import nothing_to_save, set_checkpoints
from par.codegen.pytorch.runtime.generation import Sampling, serve
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.modes import check, train
from par.codegen.pytorch.runtime.regather import set_regather
from par.codegen.pytorch.runtime.spec import (
    CP,
    DP,
    ENDS,
    GENERATES,
    HF_CHECKPOINT,
    KV_DTYPE,
    PP,
    SEQ,
    SEQUENCE_PARALLEL,
    TP,
    VOCAB,
    WORLD_SIZE,
)
from par.codegen.pytorch.runtime.trace import start_trace

# -- Entry point --------------------------------------------------------------------------------

KV_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --kv-dtype


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare one step with the unsharded Reference")
    parser.add_argument("--steps", type=int, default=0, metavar="K", help="train K steps (10 if no --check)")
    parser.add_argument("--trace", metavar="DIR", help="write every collective each rank issues to DIR/rank<r>.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of --steps")
    parser.add_argument(
        "--tolerance", type=float, help="largest relative error --check accepts (default: derived from the dtype)"
    )
    if TP > 1:  # only tensor parallelism gathers activations
        parser.add_argument(
            "--regather", action="store_true", help="save gathered activations as their shard; gather again in backward"
        )
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="fail a collective after S seconds")
    if HF_CHECKPOINT:
        parser.add_argument("--load", metavar="DIR", help="start from this Hugging Face checkpoint")
        parser.add_argument("--save", metavar="DIR", help="write the trained weights as a Hugging Face checkpoint")
    if ENDS:
        parser.add_argument("--data", metavar="FILE", help="train on a token file: a flat array of ids")
        parser.add_argument("--data-dtype", choices=("uint16", "int32"), default="uint16", help="type of the ids")
    if GENERATES:
        parser.add_argument("--generate", metavar="IDS", help='generate after these ids ("1 2 3") in every sequence')
        parser.add_argument("--prompt-len", type=int, metavar="L", help="generate after random prompts of L ids")
        parser.add_argument("--max-new", type=int, default=8, metavar="N", help="tokens added to each sequence")
        parser.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (0: greedy)")
        parser.add_argument("--top-k", type=int, metavar="K", help="sample among the K largest logits")
        parser.add_argument("--kv-dtype", choices=tuple(KV_DTYPES), help="dtype of the KV cache (default: KV_DTYPE)")
    args = parser.parse_args(argv)
    if HF_CHECKPOINT and nothing_to_save(args):
        parser.error("--save writes the weights after training: give --steps K (--steps 1 --lr 0 keeps them)")
    if GENERATES and generating(args):
        generation_args(parser, args)
        return args
    if not args.check and not args.steps:
        args.steps = 10
    return args


def generating(args: argparse.Namespace) -> bool:
    return args.generate is not None or args.prompt_len is not None


def generation_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks the options of generation; sets `prompt` (the ids, or None: random) and `length`."""
    if CP > 1:
        parser.error(f"generation under context parallelism (cp {CP}) is not written: model.py trains and checks")
    if args.generate is not None and args.prompt_len is not None:
        parser.error("give --generate IDS or --prompt-len L, not both")
    if HF_CHECKPOINT and args.save is not None and not args.steps:
        parser.error("--save writes the weights after training: give --steps K (--steps 1 --lr 0 keeps them)")
    if args.generate is not None:
        try:
            args.prompt = [int(word) for word in args.generate.split()]
        except ValueError:
            parser.error(f"--generate takes token ids separated by spaces, not {args.generate!r}")
        if not args.prompt or any(not 0 <= token < VOCAB for token in args.prompt):
            parser.error(f"--generate needs at least one token id, each from 0 to {VOCAB - 1}")
        args.length = len(args.prompt)
    else:
        args.prompt, args.length = None, args.prompt_len
        if args.length < 1:
            parser.error("--prompt-len must be at least 1")
    if args.max_new < 1:
        parser.error("--max-new must be at least 1")
    if args.length + args.max_new > SEQ:
        parser.error(f"generation: a prompt of {args.length} ids and --max-new {args.max_new} exceed seq ({SEQ})")
    if SEQUENCE_PARALLEL and args.length % TP:
        parser.error(f"generation: sequence parallelism splits the prompt over tp {TP}: give a multiple of {TP} ids")
    if args.temperature < 0 or (args.top_k is not None and not (args.temperature > 0 and 1 <= args.top_k <= VOCAB)):
        parser.error(f"--temperature must be at least 0; --top-k needs a temperature above 0 and 1 <= K <= {VOCAB}")


def init_distributed(timeout: datetime.timedelta) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if WORLD_SIZE == 1 and "MASTER_ADDR" not in os.environ:  # started without torchrun
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        return device
    # With nccl, the communicators are made now on every rank: batched sends and receives use
    # the whole group's, which all ranks must join the first time.
    dist.init_process_group(backend, timeout=timeout, device_id=device if backend == "nccl" else None)
    return device


def run(args: argparse.Namespace) -> bool:
    timeout = datetime.timedelta(seconds=args.timeout)
    device = init_distributed(timeout)
    groups = Groups(dist.get_rank(), timeout)
    trace = start_trace() if args.trace else None
    if TP > 1:
        set_regather(args.regather)
    if HF_CHECKPOINT:
        set_checkpoints(args.load, args.save)
    if GENERATES and generating(args):
        sampling = Sampling(args.temperature, args.top_k, args.seed)
        kv_dtype = KV_DTYPES[args.kv_dtype] if args.kv_dtype else KV_DTYPE
        ok = serve(
            groups,
            device,
            args.seed,
            args.prompt,
            args.length,
            args.max_new,
            sampling,
            kv_dtype,
            args.check,
            args.tolerance,
        )
    else:
        ok = check(groups, device, args.seed, args.tolerance) if args.check else True
    if args.steps:
        if ENDS:
            tokens = open_tokens(args.data, args.data_dtype) if args.data else None
            train(groups, device, args.steps, args.seed, args.lr, tokens)
        else:
            train(groups, device, args.steps, args.seed, args.lr)
    if trace is not None:
        trace.write(args.trace, groups.rank)
    dist.destroy_process_group()
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != WORLD_SIZE:
        layout = f"tp {TP} x cp {CP} x pp {PP} x dp {DP}" if CP > 1 else f"tp {TP} x pp {PP} x dp {DP}"
        print(
            f"model.py: error: this deployment runs on {WORLD_SIZE} processes ({layout}), "
            f"but {world} {'was' if world == 1 else 'were'} launched; "
            f"run: torchrun --nproc-per-node {WORLD_SIZE} model.py",
            file=sys.stderr,
        )
        return 2
    try:
        return 0 if run(args) else 1
    except Exception as error:  # a failed peer or a timeout: report it and stop now
        rank = os.environ.get("RANK", "0")
        print(f"model.py: rank {rank}: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # no teardown: destroying process groups can wait on the dead peer
