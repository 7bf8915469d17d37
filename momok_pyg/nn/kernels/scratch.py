r"""Scratch buffers: storage that a function reuses from call to call for a large temporary
that never leaves it.

A fresh tensor of tens of megabytes is fresh pages: under the allocator setting that keeps a
training run's peak memory down (:mod:`momok_pyg.training.memory`) glibc maps it on
allocation and unmaps it when it is freed, and the kernel zeroes every 4 KiB page on first
touch. A MoMoK training step makes several such temporaries per modality, of the same sizes
every step: :class:`~momok_pyg.nn.mujod.ModalityFusion`'s dropped copies of an input for all
heads (forward and backward) and its backward's products, and the transposed relation
matrices of the per-sample Tucker dropout's input gradient
(:func:`~momok_pyg.nn.kernels.tucker_dropout.per_sample_dropout_matmul`).

:func:`scratch` hands out a view of a buffer kept per name, thread, dtype and device, grown to
the largest size asked for. Its contents are garbage, and the next request for the same name
overwrites them: a caller must be done with a scratch tensor before it (or anything it calls)
asks for the same name again, and must not let it escape (return it, save it for backward,
or hand it to autograd). :func:`release` drops the buffers; the training loop calls it at the
end of every epoch.
"""
from __future__ import annotations

import math
import threading
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

_Key = Tuple[str, torch.dtype, torch.device]
_LOCAL = threading.local()


def _pool() -> Dict[_Key, Tensor]:
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = {}
    return pool


def scratch(name: str, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device) -> Tensor:
    r"""An uninitialised contiguous ``shape`` tensor on the buffer kept for ``name`` (in this
    thread, for ``dtype`` and ``device``), which is grown (reallocated) when it is too small."""
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    pool = _pool()
    key = (name, dtype, torch.device(device))
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        pool.pop(key, None)  # the old buffer goes before the new one comes
        buf = pool[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def release() -> None:
    r"""Drops this thread's scratch buffers."""
    _pool().clear()


def held_bytes() -> int:
    r"""Bytes held by this thread's scratch buffers."""
    return sum(t.numel() * t.element_size() for t in _pool().values())


__all__ = ["scratch", "release", "held_bytes"]
