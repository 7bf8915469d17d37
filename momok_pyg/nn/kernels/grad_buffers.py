r"""Gradient buffers that a backward pass borrows and an optimizer stepping inside the
backward pass gives back, so that a large gradient reuses the same memory every step.

A fresh tensor of hundreds of megabytes is fresh pages: the kernel maps and zeroes every 4 KiB
page on first touch, whatever glibc's settings (such blocks are always ``mmap``-ed). On the
2-core benchmark machine writing the gradient of one Tucker core at :math:`d = 300`
(:math:`\partial L / \partial \mathcal{W} = \mathbf{R}^\top \mathbf{G}`, 108 MB) took
~53 ms into a fresh tensor and ~21 ms into a reused one.

The protocol:

* a custom backward asks :func:`gradient_buffer` for its output (a reused tensor if one was
  given back, else a new one) and returns it as the gradient; autograd hands it, without a
  copy, to the parameter's ``.grad``;
* :class:`~momok_pyg.training.BackwardAdam` updates the parameter, then passes the gradient
  it is about to drop to :func:`give_back`, which keeps it for the next request of the same
  shape, dtype and device. Only shapes that were requested are kept, one tensor per shape
  (parameters of one shape take turns: their gradients are formed one after the other).

A gradient given back is garbage to its owner (BackwardAdam drops it), so the next backward
pass may overwrite it. With any other optimizer nothing is given back and every request
allocates, as plain autograd would. :func:`release` drops the kept tensors.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

_Key = Tuple[Tuple[int, ...], torch.dtype, torch.device]
_KEPT: Dict[_Key, Optional[Tensor]] = {}  # requested shapes -> a tensor given back, or None


def _key(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> _Key:
    return tuple(int(s) for s in shape), dtype, torch.device(device)


def gradient_buffer(shape: Sequence[int], dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    r"""An uninitialised ``shape`` tensor for a gradient the caller overwrites entirely: the
    one last given back for this shape, dtype and device, else a new one."""
    key = _key(shape, dtype, device)
    buf = _KEPT.get(key)
    _KEPT[key] = None  # lent out (or: this shape is wanted from now on)
    return buf if buf is not None else torch.empty(key[0], dtype=dtype, device=device)


def give_back(grad: Optional[Tensor]) -> bool:
    r"""Keeps :obj:`grad`, a gradient its owner is dropping, for the next
    :func:`gradient_buffer` request of its shape; returns whether it was kept (only
    requested shapes, one tensor each, and only a contiguous tensor that owns all of its
    storage, so that no other tensor can see the overwrite)."""
    if grad is None or grad.requires_grad:
        return False
    key = _key(grad.shape, grad.dtype, grad.device)
    if key not in _KEPT or _KEPT[key] is not None:
        return False
    whole = (grad.is_contiguous() and grad.storage_offset() == 0
             and grad.untyped_storage().nbytes() == grad.numel() * grad.element_size())
    if not whole:
        return False
    _KEPT[key] = grad
    return True


def release() -> None:
    r"""Drops every kept tensor and forgets the requested shapes."""
    _KEPT.clear()


def kept_bytes() -> int:
    r"""Bytes held by kept tensors."""
    return sum(t.numel() * t.element_size() for t in _KEPT.values() if t is not None)


__all__ = ["gradient_buffer", "give_back", "release", "kept_bytes"]
