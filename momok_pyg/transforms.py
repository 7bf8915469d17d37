r"""Robustness transforms for multi-modal knowledge graphs (the noise / missing-modality /
sparsity studies of the MoMoK paper, Fig. 3).

Each is a :class:`~torch_geometric.transforms.BaseTransform` on an MMKG
:class:`~torch_geometric.data.HeteroData` (see :mod:`momok_pyg.datasets.schema`). They

* draw from their own :class:`torch.Generator` seeded with :obj:`seed`: the same transform
  gives the same result on every call and the global random state is left untouched;
* never modify their input (new tensors are assigned to a shallow copy);
* change only training-side information: valid and test triples are never touched.

.. code-block:: python

    import torch_geometric.transforms as T
    from momok_pyg.transforms import ModalityNoise, ModalityMissing, LinkSparsify

    noisy = ModalityNoise(ratio=0.3, std=0.5)(data)            # 30% of entities, 0.5 x std
    partial = ModalityMissing(ratio=0.4, modalities=["image"])(data)
    sparse = T.Compose([LinkSparsify(0.2), ModalityMissing(0.2)])(data)
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform

from .datasets.schema import ENTITY, feature_modalities, get_triples, set_triples

__all__ = ["ModalityNoise", "ModalityMissing", "LinkSparsify", "feature_scale"]


def _check_ratio(ratio: float, who: str) -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: expected 'ratio' to be a number in [0, 1], got "
                         f"{ratio!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{who}: expected 'ratio' in [0, 1], got {ratio!r}")
    return ratio


def _check_modalities(modalities: Optional[Sequence[str]], who: str) -> Optional[List[str]]:
    if modalities is None:
        return None
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = list(modalities)
    bad = [m for m in modalities if not isinstance(m, str)]
    if bad or not modalities:
        raise ValueError(f"{who}: expected 'modalities' to be None, a modality name or a "
                         f"non-empty list of names, got {modalities!r}")
    return modalities


def _resolve_modalities(data: HeteroData, modalities: Optional[List[str]],
                        who: str) -> List[str]:
    available = feature_modalities(data)
    if modalities is None:
        return available
    unknown = [m for m in modalities if m not in available]
    if unknown:
        raise KeyError(f"{who}: unknown modality {unknown[0]!r}; this graph has the feature "
                       f"modalities {available}")
    return modalities


def _pick(candidates: Tensor, ratio: float, gen: torch.Generator) -> Tensor:
    r"""``round(ratio * len(candidates))`` of :obj:`candidates`, uniformly without
    replacement."""
    k = round(ratio * candidates.numel())
    return candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]


def feature_scale(x: Tensor, mask: Optional[Tensor] = None) -> float:
    r"""The scale used by :class:`ModalityNoise` with ``relative=True``: the root mean
    per-dimension variance of the present rows,

    .. math::
        s = \sqrt{\tfrac{1}{d} \textstyle\sum_{j=1}^{d} \mathrm{Var}_{i:\,m_i}[x_{ij}]}.

    Returns ``0.0`` for fewer than two present rows."""
    if mask is not None:
        x = x[mask]
    if x.size(0) < 2:
        return 0.0
    return float(x.double().var(dim=0, unbiased=True).mean().sqrt())


class ModalityNoise(BaseTransform):
    r"""Adds Gaussian noise to the features of a random fraction of the entities.

    For every selected modality :math:`m`, :math:`\mathrm{round}(\rho\, n_m)` of the
    :math:`n_m` entities that have :math:`m` (mask ``True``) are drawn uniformly without
    replacement and get

    .. math::
        \mathbf{x}^m_e \leftarrow \mathbf{x}^m_e + \boldsymbol{\epsilon}_e, \qquad
        \boldsymbol{\epsilon}_e \sim \mathcal{N}(0, (\tau\, s_m)^2 I),

    with :math:`\rho` = :obj:`ratio`, :math:`\tau` = :obj:`std` and
    :math:`s_m` = :func:`feature_scale` of modality :math:`m` (computed on the input, over the
    present entities) if :obj:`relative` (default), else :math:`s_m = 1` (:obj:`std` is then
    an absolute standard deviation). Missing entities stay zero; masks are unchanged. Each
    modality draws its own entities, in the order of ``data.modalities``.

    Args:
        ratio (float): Fraction :math:`\rho \in [0, 1]` of the present entities to perturb.
        std (float): Noise standard deviation :math:`\tau \ge 0`, relative to the feature
            scale or absolute (see :obj:`relative`).
        modalities (str or list[str], optional): Modalities to perturb (default: all feature
            modalities of the graph).
        seed (int): Seed of the transform's own generator.
        relative (bool): Whether :obj:`std` is relative to :func:`feature_scale`.
    """
    def __init__(self, ratio: float, std: float, modalities: Optional[Sequence[str]] = None,
                 seed: int = 0, relative: bool = True) -> None:
        self.ratio = _check_ratio(ratio, "ModalityNoise")
        try:
            std = float(std)
        except (TypeError, ValueError):
            raise ValueError(f"ModalityNoise: expected 'std' to be a number >= 0, got "
                             f"{std!r}") from None
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"ModalityNoise: expected 'std' >= 0, got {std!r}")
        self.std = std
        self.modalities = _check_modalities(modalities, "ModalityNoise")
        self.seed = int(seed)
        self.relative = bool(relative)

    def forward(self, data: HeteroData) -> HeteroData:
        gen = torch.Generator().manual_seed(self.seed)
        store = data[ENTITY]
        for m in _resolve_modalities(data, self.modalities, "ModalityNoise"):
            x, mask = store[m], store[f"{m}_mask"]
            idx = _pick(mask.nonzero().view(-1), self.ratio, gen)
            scale = feature_scale(x, mask) if self.relative else 1.0
            noise = torch.randn(idx.numel(), x.size(1), generator=gen, dtype=x.dtype)
            x = x.clone()
            x[idx] += (self.std * scale) * noise
            store[m] = x
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(ratio={self.ratio}, std={self.std}, "
                f"modalities={self.modalities}, seed={self.seed}, relative={self.relative})")


class ModalityMissing(BaseTransform):
    r"""Removes a modality from a random fraction of the entities.

    For every selected modality :math:`m`, :math:`\mathrm{round}(\rho\, n_m)` of the
    :math:`n_m` entities that have :math:`m` are drawn uniformly without replacement; their
    mask becomes ``False`` and their row zero (the schema invariant), so with
    :math:`\rho = 1` nobody has :math:`m` any more. Each modality draws its own entities,
    in the order of ``data.modalities``.

    Args:
        ratio (float): Fraction :math:`\rho \in [0, 1]` of the present entities to remove.
        modalities (str or list[str], optional): Modalities to thin out (default: all
            feature modalities of the graph).
        seed (int): Seed of the transform's own generator.
    """
    def __init__(self, ratio: float, modalities: Optional[Sequence[str]] = None,
                 seed: int = 0) -> None:
        self.ratio = _check_ratio(ratio, "ModalityMissing")
        self.modalities = _check_modalities(modalities, "ModalityMissing")
        self.seed = int(seed)

    def forward(self, data: HeteroData) -> HeteroData:
        gen = torch.Generator().manual_seed(self.seed)
        store = data[ENTITY]
        for m in _resolve_modalities(data, self.modalities, "ModalityMissing"):
            x, mask = store[m], store[f"{m}_mask"]
            idx = _pick(mask.nonzero().view(-1), self.ratio, gen)
            mask = mask.clone()
            mask[idx] = False
            x = x.clone()
            x[idx] = 0.0
            store[m], store[f"{m}_mask"] = x, mask
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(ratio={self.ratio}, "
                f"modalities={self.modalities}, seed={self.seed})")


class LinkSparsify(BaseTransform):
    r"""Removes a random fraction of the training triples.

    :math:`\mathrm{round}(\rho\, E_{\text{train}})` training triples are drawn uniformly
    without replacement and dropped; the others keep their order. ``edge_index`` /
    ``edge_type`` stay equal to the (new) training graph; valid and test are unchanged (and
    so still count as known triples in filtered evaluation). With :math:`\rho = 1` the
    training graph is empty.

    Args:
        ratio (float): Fraction :math:`\rho \in [0, 1]` of training triples to remove.
        seed (int): Seed of the transform's own generator.
    """
    def __init__(self, ratio: float, seed: int = 0) -> None:
        self.ratio = _check_ratio(ratio, "LinkSparsify")
        self.seed = int(seed)

    def forward(self, data: HeteroData) -> HeteroData:
        gen = torch.Generator().manual_seed(self.seed)
        train = get_triples(data, "train")
        drop = _pick(torch.arange(train.size(0)), self.ratio, gen)
        keep = torch.ones(train.size(0), dtype=torch.bool)
        keep[drop] = False
        set_triples(data, "train", train[keep])
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(ratio={self.ratio}, seed={self.seed})"
