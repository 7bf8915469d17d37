r"""One optimisation step and one epoch of 1-N training (used by :func:`~momok_pyg.training.fit`).

One step on a batch of queries :math:`\{(e_i, r_i)\}` (:math:`r_i \in [0, 2R)`) with
multi-hot targets :math:`\mathbf{Y} \in \{0,1\}^{B \times N}`:

.. math::
    \mathcal{L} = \mathcal{L}_{\mathrm{KGC}}(\mathbf{S}, \mathbf{Y}) +
    \lambda \cdot \hat{I}_{\mathrm{CLUB}}(\mathbf{V}),

where :math:`\mathbf{S}` are the per-modality scores and :math:`\mathbf{V}` the expert views
of the forward pass, :math:`\hat{I}_{\mathrm{CLUB}}` is ExID's mutual-information upper bound
(``lambda_club`` = :math:`\lambda`). The model's parameters take one Adam step on
:math:`\mathcal{L}`; then ExID's variational networks :math:`q_\theta` take one step of their own
Adam optimizer on their log-likelihood loss of the *detached* views (of the same forward pass,
or recomputed after the model's step with ``q_views="updated"``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from momok_pyg.nn.kernels import grad_buffers, scratch

from . import distributed
from .batching import OneToNQueries, epoch_generator
from .config import TrainConfig
from .device import model_device
from .memory import mmap_threshold_while
from .optim import BackwardAdam


def build_optimizers(model: torch.nn.Module, config: TrainConfig
                ) -> Tuple[Any, Optional[torch.optim.Optimizer]]:
    r"""Adam on the model's parameters (:class:`BackwardAdam` if
    ``config.optimizer_in_backward``) and ExID's own Adam on its :math:`q_\theta`."""
    params = list(model.kgc_parameters()) if hasattr(model, "kgc_parameters") else [
        p for p in model.parameters()]
    # fused Adam: one kernel per step instead of ~6 passes over every parameter (the Tucker
    # cores alone are 4 x d^3 floats); ~6x faster optimizer step (benchmarks/bench_momok.py)
    def fused(ps) -> bool:
        return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in ps)

    if config.optimizer_in_backward:
        opt = BackwardAdam(params, lr=config.lr, weight_decay=config.weight_decay,
                           fused=fused(params))
    else:
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                               fused=fused(params))
    exid = getattr(model, "exid", None)
    q_params = list(exid.parameters()) if exid is not None else []
    q_opt = (torch.optim.Adam(q_params, lr=config.lr, fused=fused(q_params))
             if len(q_params) > 0 else None)
    return opt, q_opt


def train_epoch(model: torch.nn.Module, queries: OneToNQueries, optimizer: torch.optim.Optimizer,
                q_optimizer: Optional[torch.optim.Optimizer], config: TrainConfig, epoch: int,
                progress: bool = False, ddp: Optional[torch.nn.Module] = None
                ) -> Dict[str, float]:
    r"""One pass over all training queries in the order drawn from ``(seed, epoch)``.

    Returns the mean KGC loss, the mean ExID upper bound and the mean Q-network loss. Runs
    with glibc's mmap threshold at ``config.malloc_mmap_threshold`` (see
    :func:`~momok_pyg.training.memory.mmap_threshold_while`); the gradient and scratch
    buffers reused from step to step (:mod:`momok_pyg.nn.kernels.grad_buffers`,
    :mod:`momok_pyg.nn.kernels.scratch`) are released at its end.
    """
    try:
        with mmap_threshold_while(config.malloc_mmap_threshold):
            return _train_epoch(model, queries, optimizer, q_optimizer, config, epoch,
                                progress, ddp)
    finally:
        grad_buffers.release()
        scratch.release()


def train_step(model: torch.nn.Module, queries: OneToNQueries, ent: Tensor, rel: Tensor,
               idx: Tensor, optimizer: torch.optim.Optimizer,
               q_optimizer: Optional[torch.optim.Optimizer], config: TrainConfig,
               generator: Optional[torch.Generator] = None,
               ddp: Optional[torch.nn.Module] = None) -> Dict[str, float]:
    r"""One optimisation step on the queries ``idx`` of :obj:`queries` (entities ``ent``,
    relations ``rel``): the KGC loss (1-N, or against sampled candidates drawn from
    :obj:`generator` with ``config.negatives``) plus :math:`\lambda` times ExID's upper bound,
    one Adam step, then one step of the :math:`Q_\theta` networks. Returns the step's
    ``{"loss", "mi_upper", "q_loss"}``. With :obj:`ddp` (the model's
    :func:`~momok_pyg.training.distributed.wrap`), this process takes its part of the batch
    and DDP averages the gradients (:mod:`momok_pyg.training.distributed`)."""
    exid = getattr(model, "exid", None)
    scale = 1.0
    if ddp is not None:
        n_global = idx.numel()
        ent, rel, idx = (distributed.local_part(x) for x in (ent, rel, idx))
        scale = idx.numel() * distributed.world() / n_global
    device = model_device(model)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.bf16 else
                contextlib.nullcontext())
    if config.negatives is None:
        target = queries.sparse_target(idx)
    else:
        cand, target, shift = queries.sampled_target(idx, config.negatives, generator)
    if device.type != "cpu":
        ent, rel = ent.to(device, non_blocking=True), rel.to(device, non_blocking=True)
    with autocast:
        if ddp is not None:
            out, upper = ddp(ent, rel, target,
                             None if config.negatives is None else cand.to(device),
                             None if config.negatives is None else shift.to(device),
                             with_upper=config.lambda_club > 0)
        elif config.negatives is None:
            out, upper = model.forward_loss(ent, rel, target), None
        else:
            out, upper = model.forward_loss_sampled(ent, rel, target, cand.to(device),
                                                    shift.to(device)), None
        loss = out.loss
        if ddp is None and exid is not None and config.lambda_club > 0:
            upper = exid.upper_bound({m: v.float() for m, v in out.views.items()})
    total = loss + config.lambda_club * upper if upper is not None else loss
    if scale != 1.0:
        total = total * scale
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    q_value = 0.0
    if exid is not None and q_optimizer is not None:
        if config.q_views == "updated":  # the official timing: after the model's step
            views = model.head_views(ent)
        else:
            views = {m: v.detach().float() for m, v in out.views.items()}
        q_optimizer.zero_grad(set_to_none=True)
        q_loss = exid.learning_loss(views)
        (q_loss * scale).backward()
        if ddp is not None:
            distributed.average_gradients(exid.parameters())
        q_optimizer.step()
        q_value = float(q_loss.detach())
    return {"loss": float(loss.detach()), "q_loss": q_value,
            "mi_upper": float(upper.detach()) if upper is not None else 0.0}


def _train_epoch(model: torch.nn.Module, queries: OneToNQueries,
                 optimizer: torch.optim.Optimizer, q_optimizer: Optional[torch.optim.Optimizer],
                 config: TrainConfig, epoch: int, progress: bool,
                 ddp: Optional[torch.nn.Module] = None) -> Dict[str, float]:
    model.train()
    gen = epoch_generator(config.seed, epoch)
    sums = {"loss": 0.0, "mi_upper": 0.0, "q_loss": 0.0}
    n = 0
    bar = tqdm(total=queries.num_batches(config.batch_size), desc=f"epoch {epoch}",
               disable=not progress, leave=False, dynamic_ncols=True)
    for ent, rel, idx in queries.batches(config.batch_size, gen):
        step = train_step(model, queries, ent, rel, idx, optimizer, q_optimizer, config, gen,
                          ddp)
        for k, v in step.items():
            sums[k] += v
        n += 1
        bar.update(1)
        bar.set_postfix(loss=f"{step['loss']:.4f}")
    bar.close()
    if not math.isfinite(sums["loss"]):
        raise FloatingPointError(f"epoch {epoch}: the training loss is not finite "
                                 f"({sums['loss']}); lower --lr or disable --bf16")
    return {k: v / max(n, 1) for k, v in sums.items()}
