r"""Fused kernels: small element-wise functions run as one :func:`torch.compile` (Inductor)
loop each where a compiler is available, and eagerly (same values) where it is not.

MoMoK's step is full of element-wise chains over large tensors (dropout masks recomputed from a
seed, attention and ReLU gradients, CLUB terms). Eagerly every link of such a chain writes a
fresh tensor, and a fresh tensor of a megabyte or more is fresh pages (page faults) under the
allocator setting that keeps a training run's peak memory down (see
:mod:`momok_pyg.training.memory`); fused, the chain reads its inputs and writes its outputs
once. ``MOMOK_PYG_COMPILE=0`` in the environment turns every fused kernel off; a failed
compilation (no C++ compiler) turns them off for the process, with one warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_COMPILED: Dict[Callable, Callable] = {}
_RECOMPILE_LIMIT = 64
_COMPILE_FAILED = False


def _compile_default() -> bool:
    return os.environ.get("MOMOK_PYG_COMPILE", "1").lower() not in ("0", "false", "no")


def compile_enabled() -> bool:
    r"""Whether fused kernels are tried: :obj:`False` when the environment sets
    ``MOMOK_PYG_COMPILE=0`` or a compilation has failed in this process."""
    return _compile_default() and not _COMPILE_FAILED


def compile_failed() -> bool:
    r"""Whether a compilation has failed in this process (the fused kernels are then off)."""
    return _COMPILE_FAILED


def run_compiled(fn: Callable, *args) -> Optional[Any]:
    r"""Runs ``fn(*args)`` as one :func:`torch.compile` (Inductor, dynamic shapes) kernel,
    compiled once per function; :obj:`None` once compilation has failed (the first failure
    gives a warning), so that the caller runs its eager version.

    While a :class:`~torch.utils._python_dispatch.TorchDispatchMode` is active (e.g.
    :class:`torch.utils.flop_counter.FlopCounterMode`) ``fn`` runs op by op instead, so that
    the mode sees every op and no kernel compiled under it is kept for later calls."""
    global _COMPILE_FAILED
    if _COMPILE_FAILED:
        return None
    if _get_current_dispatch_mode() is not None:
        return fn(*args)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
    try:
        # Parameters passed in (gate weights, relation tables) get dynamic shapes like any
        # other input, and a kernel may be specialised more often than dynamo's default 8
        # times (dtypes, autocast, thread counts, optional arguments): past that limit it
        # would silently run op by op for the rest of the process (several models of
        # different sizes in one process, as in a sweep or a test session).
        with torch._dynamo.config.patch(force_parameter_static_shapes=False,
                                        recompile_limit=_RECOMPILE_LIMIT):
            return compiled(*args)
    except Exception as err:  # no C++ compiler / Triton: the eager kernels take over
        _COMPILE_FAILED = True
        warnings.warn(f"torch.compile of momok_pyg's fused kernels failed ({err!r:.200}); "
                      "running them eagerly (slower). Set MOMOK_PYG_COMPILE=0 to skip the "
                      "attempt.", stacklevel=2)
        return None


def fused_or_eager(kernel: Callable, *args, eager: Optional[Callable] = None) -> Any:
    r"""``kernel(*args)`` as one compiled kernel when fused kernels are enabled
    (:func:`compile_enabled`) and it compiles, else ``eager(*args)`` (default: ``kernel``
    itself, run op by op), which computes the same values."""
    if compile_enabled():
        out = run_compiled(kernel, *args)
        if out is not None:
            return out
    return (eager or kernel)(*args)


__all__ = ["compile_enabled", "compile_failed", "run_compiled", "fused_or_eager"]
