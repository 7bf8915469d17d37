r"""Multi-process data-parallel training on :mod:`torch.distributed`.

Start ``N`` processes with ``torchrun --nproc-per-node N -m momok_pyg.cli train ...`` (or
``momok-pyg train --nproc N ...``, which launches exactly that); every process runs the same
:func:`~momok_pyg.training.fit`, which joins the process group that ``torchrun`` describes
(``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` in the environment; gloo on CPU, NCCL on GPU) and

* splits every global batch of ``batch_size`` queries into ``N`` contiguous local batches and
  runs the model's training step through
  :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients; the local
  loss is weighted by its share of the batch, so an uneven last batch gets the gradient of the
  global mean exactly as one process would;
* steps the ExID networks :math:`Q_\theta` on the all-reduced mean of their gradients (they
  are kept out of DDP: their loss has its own backward pass);
* uses ``torch.optim.Adam`` (``optimizer_in_backward`` is turned off: an optimizer step
  inside the backward pass would run before DDP has averaged the gradient);
* ranks the valid / test queries in shards (one batch of distinct queries per rank in turn)
  and gathers the ranks, so every process computes the same metrics and takes the same
  selection and early-stopping decisions;
* writes checkpoints and JSON from rank 0 only (atomically, as always), and resumes every
  rank from the same ``last.pt``.

A process that dies makes ``torchrun`` stop the others and exit non-zero; a collective that
waits longer than ``MOMOK_PYG_DIST_TIMEOUT`` seconds (default 600) fails instead of hanging.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def requested_world() -> int:
    r"""``WORLD_SIZE`` of the environment (1 when not launched by ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> Tuple[int, int, bool]:
    r"""Joins the process group ``torchrun`` describes, if any; returns ``(rank, world,
    created)`` (``created``: this call initialised the group and :func:`teardown` should
    destroy it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if requested_world() <= 1:
        return 0, 1, False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("MOMOK_PYG_DIST_TIMEOUT", 600)))
    dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), True


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def local_part(x: Tensor) -> Tensor:
    r"""This rank's contiguous part of a global batch (``tensor_split`` into ``world``)."""
    return x.tensor_split(world())[rank()] if world() > 1 else x


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    r"""Replaces every gradient by its mean over the ranks (one flat all-reduce; a missing
    gradient counts as zero)."""
    if world() <= 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class StepModule(torch.nn.Module):
    r"""The training step's forward as one module, for
    :class:`~torch.nn.parallel.DistributedDataParallel`: the KGC loss of the local queries
    (1-N or against sampled candidates) and ExID's upper bound of their views."""
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ent: Tensor, rel: Tensor, target: Tensor,
                candidates: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                with_upper: bool = True):
        if candidates is None:
            out = self.model.forward_loss(ent, rel, target)
        else:
            out = self.model.forward_loss_sampled(ent, rel, target, candidates, shift)
        exid = getattr(self.model, "exid", None)
        upper = None
        if exid is not None and with_upper:
            upper = exid.upper_bound({m: v.float() for m, v in out.views.items()})
        return out, upper


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    r"""The model's :class:`StepModule` under DDP, ExID's :math:`Q_\theta` left out."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    step = StepModule(model)
    exid = getattr(model, "exid", None)
    if exid is not None:
        ignore = [f"model.exid.{n}" for n, _ in exid.named_parameters()]
        ignore += [f"model.exid.{n}" for n, _ in exid.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(step, ignore)
    device = torch.device(device)
    return DDP(step, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True)
