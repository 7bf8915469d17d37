r"""Loading datasets by name.

.. code-block:: python

    from momok_pyg.datasets import load_dataset, register_dataset

    dataset = load_dataset("MKG-Y", root="datasets")     # -> MKGY(root="datasets")
    data = dataset[0]                                     # HeteroData

Names are matched case-insensitively, ignoring ``-``, ``_`` and spaces (``"mkg_y"``,
``"MKGY"`` and ``"MKG-Y"`` are the same). Other modules add datasets with
:func:`register_dataset`; the registry is the plain dict :data:`DATASETS`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List

from .benchmarks import DB15K, KVC16K, MKGW, MKGY
from .fb15k237 import FB15k237

__all__ = ["DATASETS", "register_dataset", "unregister_dataset", "load_dataset",
           "list_datasets", "canonical_name"]

#: ``{canonical name: factory}``; a factory is called as ``factory(root=..., **kwargs)``.
DATASETS: Dict[str, Callable[..., Any]] = {}
_DISPLAY: Dict[str, str] = {}


def canonical_name(name: str) -> str:
    r"""Lower-case :obj:`name` without ``-``, ``_`` and white space."""
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def register_dataset(name: str, factory: Callable[..., Any], aliases: Iterable[str] = (),
                     overwrite: bool = False) -> Callable[..., Any]:
    r"""Registers :obj:`factory` (a dataset class or function taking ``root=`` and keyword
    arguments) under :obj:`name` and :obj:`aliases`.

    Raises:
        ValueError: a name is taken by another factory and :obj:`overwrite` is ``False``.
    """
    for n in (name, *aliases):
        key = canonical_name(n)
        if not key:
            raise ValueError(f"invalid dataset name {n!r}")
        if key in DATASETS and DATASETS[key] is not factory and not overwrite:
            raise ValueError(f"dataset name {n!r} is already registered (to "
                             f"{DATASETS[key]!r}); pass overwrite=True to replace it")
        DATASETS[key] = factory
    _DISPLAY[canonical_name(name)] = name
    return factory


def unregister_dataset(name: str) -> None:
    r"""Removes :obj:`name` and every alias registered to the same factory."""
    key = canonical_name(name)
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}")
    factory = DATASETS[key]
    for k in [k for k, f in DATASETS.items() if f is factory]:
        del DATASETS[k]
        _DISPLAY.pop(k, None)


def list_datasets() -> List[str]:
    r"""The registered names (as registered, aliases excluded)."""
    return sorted(_DISPLAY.values(), key=str.lower)


def load_dataset(name: str, root: str = "datasets", **kwargs: Any) -> Any:
    r"""Instantiates the dataset registered as :obj:`name`: ``factory(root=root,
    **kwargs)``. For the benchmarks (``"DB15K"``, ``"MKG-W"``, ``"MKG-Y"``, ``"KVC16K"``
    alias ``"Kuai16K"``) this is the :class:`~momok_pyg.datasets.benchmarks.MMKGBenchmark`
    whose ``[0]`` is the :class:`HeteroData`; ``kwargs`` e.g. ``features="names"``,
    ``raw_from=...``.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    key = canonical_name(name)
    if key not in DATASETS:
        aliases = sorted(set(k for k in DATASETS) - set(_DISPLAY))
        raise KeyError(f"unknown dataset {name!r}; expected one of {list_datasets()} "
                       f"(aliases: {aliases}; case, '-' and '_' are ignored)")
    return DATASETS[key](root=root, **kwargs)


register_dataset("DB15K", DB15K)
register_dataset("MKG-W", MKGW)
register_dataset("MKG-Y", MKGY)
register_dataset("KVC16K", KVC16K, aliases=("Kuai16K", ))
register_dataset("FB15k-237", FB15k237)
