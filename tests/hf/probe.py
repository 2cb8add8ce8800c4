"""Run on every rank by the oracle tests (through fork_launch, as a model.py would be): loads a
generated model.py as a module, fills its stage from a Hugging Face checkpoint with model.py's own
--load, runs one training step on the batch model.py draws from its seed, and writes what the
test compares with transformers: this rank's outputs (the layer stack's output, or this rank's
logits, caught on their way into the loss) and losses on the last stage, the auxiliary losses
of a mixture of experts' routings where it has them, and the reduced gradients as a Hugging Face checkpoint (written by rank 0 with model.py's own --save code).

    main([model_py, checkpoint, out])
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist
from fork_launch import load_module


def main(argv: list[str]) -> int:
    model_py, checkpoint, out = argv
    m = load_module(Path(model_py), "model_under_test")
    timeout = datetime.timedelta(seconds=120)
    device = m.init_distributed(timeout)
    groups = m.Groups(dist.get_rank(), timeout)
    stage = m.Stage(groups).to(device=device, dtype=m.DTYPE)
    loaded = m.load_checkpoint(checkpoint, stage, groups)
    logits = []
    loss_of = m.microbatch_loss

    def catching(stage, output, target):
        logits.append(output.detach().cpu())
        return loss_of(stage, output, target)

    m.microbatch_loss = catching  # the schedules call it by its global name
    aux = []  # a mixture of experts' auxiliary losses, as each routing adds it to the gradient
    if getattr(m, "ROUTER_AUX_LOSS_COEF", 0):
        route = m.route

        def recording(*args, **kwargs):
            routing = route(*args, **kwargs)
            aux.append(routing.aux_loss.detach().cpu())
            return routing

        m.route = recording  # the layers call it by its global name
    schedule = m.PipelineSchedule(stage, groups, device)
    buffer = m.GradientBuffer(stage)
    _, losses = m.train_step(schedule, buffer, groups, m.rank_data(groups, 0, device))
    if logits:
        torch.save({"outputs": logits, "losses": [loss.cpu() for loss in losses]}, f"{out}/outputs{groups.rank}.pt")
    if aux:
        torch.save(aux, f"{out}/aux{groups.rank}.pt")
    m.save_checkpoint(f"{out}/gradients", buffer.main_views, groups, loaded)
    dist.destroy_process_group()
    return 0
