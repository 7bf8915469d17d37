r"""Process memory settings of a training run."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from typing import Iterator, Optional

#: ``M_MMAP_THRESHOLD`` of glibc's ``<malloc.h>``
_M_MMAP_THRESHOLD = -3
#: the largest threshold glibc accepts (``HEAP_MAX_SIZE / 2`` on 64-bit systems)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

_applied: Optional[int] = None


def _libc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def set_malloc_mmap_threshold(nbytes: int) -> bool:
    r"""Fixes glibc's mmap threshold at ``nbytes``: every allocation of at least that size gets
    its own pages, returned to the system when freed (``mallopt(M_MMAP_THRESHOLD, nbytes)``,
    the same as ``MALLOC_MMAP_THRESHOLD_=nbytes`` in the environment).

    By default glibc raises the threshold to the size of every freed large block (up to
    32 MiB), so a training step's large temporaries (expert views, fusion projections,
    relation matrices: tens of MB each) come from the heap, whose freed holes are kept; at
    MoMoK's d = 300 on MKG-Y that cost 0.23–0.24 GB of peak RSS (RESULTS.md). A fixed
    threshold below those sizes gives it back at the cost of fresh pages for those tensors,
    which the kernel faults in and zeroes (~0.25 ms per MB on one core of the benchmark
    machine). :class:`~momok_pyg.training.TrainConfig` fixes it at 1 MiB: the largest
    per-step temporaries reuse buffers of their own (:mod:`momok_pyg.nn.kernels.grad_buffers`,
    :mod:`momok_pyg.nn.kernels.scratch`), and with them in place an 8 MiB threshold, which lets the
    batch-sized tensors (``[1024, 300]`` floats are 1.2 MB) reuse heap blocks, was no faster
    in a full benchmark run but raised peak RSS by ~0.1 GB (RESULTS.md;
    ``benchmarks/bench_momok.py --malloc-variant [BYTES]`` compares another setting).

    The setting is process-wide and stays. Returns :obj:`False` without doing anything where
    the C library is not glibc.
    """
    global _applied
    if not 0 < nbytes <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes, "
                         f"got {nbytes}")
    libc = _libc()
    if libc is None:
        return False
    if _applied == nbytes:
        return True
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(nbytes)))
    if ok:
        _applied = nbytes
    return ok


@contextlib.contextmanager
def mmap_threshold_while(nbytes: Optional[int]) -> Iterator[None]:
    r"""Runs the block (a training epoch) with glibc's mmap threshold fixed at ``nbytes``
    (:func:`set_malloc_mmap_threshold`), then fixes it at :data:`MAX_MMAP_THRESHOLD`, where
    glibc's own default ends up after the first large blocks are freed, and returns the
    heap's free pages to the system (``malloc_trim(0)``). What runs between epochs
    (evaluation: ``[B, N]`` score tensors allocated and freed batch after batch) then reuses
    heap blocks instead of faulting in fresh pages for each. ``None``: does nothing."""
    if nbytes is None:
        yield
        return
    set_malloc_mmap_threshold(nbytes)
    try:
        yield
    finally:
        if set_malloc_mmap_threshold(MAX_MMAP_THRESHOLD):
            _libc().malloc_trim(ctypes.c_size_t(0))
