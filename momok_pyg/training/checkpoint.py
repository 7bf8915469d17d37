r"""Atomic checkpoint / JSON writing and RNG state capture for exact resumption.

A file is written to a temporary file in the *same* directory, flushed and ``fsync``-ed,
then moved over the destination with :func:`os.replace` (atomic on POSIX), so a reader never
sees a half-written ``last.pt``/``best.pt``/``metrics.json`` even if the writer is killed
with ``SIGKILL``. Stale temporaries of a killed writer are removed by
:func:`remove_stale_tmp`.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

import numpy as np
import torch

TMP_SUFFIX = ".tmp"
PathLike = Union[str, os.PathLike]


def _atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    r"""``torch.save(obj, path)``, atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: PathLike) -> None:
    r"""Writes :obj:`obj` as indented JSON to :obj:`path`, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"
    _atomic_write(path, lambda f: f.write(text), mode="w")


def remove_stale_tmp(directory: PathLike) -> int:
    r"""Removes temporaries left behind by a killed :func:`_atomic_write` in
    :obj:`directory`; returns how many were removed."""
    n = 0
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(f".*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def load_checkpoint(path: PathLike, map_location: str = "cpu") -> Dict[str, Any]:
    r"""Loads a checkpoint written by :mod:`momok_pyg.training` (tensors, numbers, strings,
    lists and dicts only, so ``weights_only=True`` suffices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"{path}: cannot read checkpoint ({e}); expected a file written "
                           f"by momok_pyg.training") from e


def get_rng_state() -> Dict[str, Any]:
    r"""The global RNG states of torch, Python's :mod:`random` and NumPy, in a form
    loadable with ``weights_only=True``."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    r"""Restores states captured by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    r"""Seeds torch, Python's :mod:`random` and NumPy."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit(path: PathLike = ".") -> str:
    r"""``git rev-parse HEAD`` of the checkout holding :obj:`path` with ``"+dirty"`` appended
    when tracked files have uncommitted changes, or ``"unknown"``. The outputs that
    ``momok-pyg reproduce`` and ``momok-pyg report`` write (``results/``, ``RESULTS.md``)
    do not count as changes: a result replaced while its run re-evaluates is not a change
    of the code.

    ``MOMOK_PYG_COMMIT``, when set, names the commit instead (with ``"+copy"`` appended): for
    a copy of a committed tree run where git cannot tell (no ``.git``, or a stale one, as on
    a remote GPU machine that receives the working tree)."""
    if os.environ.get("MOMOK_PYG_COMMIT"):
        return os.environ["MOMOK_PYG_COMMIT"] + "+copy"
    fallback = "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(path), capture_output=True,
                             text=True, timeout=10, check=True)
        sha = out.stdout.strip()
        if not sha:
            return fallback
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)results", ":(top,exclude)RESULTS.md"],
                               cwd=Path(path), capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return fallback
