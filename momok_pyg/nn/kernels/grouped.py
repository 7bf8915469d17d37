r"""Relation-grouped products: one matrix per distinct relation, applied to its rows."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def group_by_relation(rel: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Groups a batch by relation id.

    Returns:
        ``(unique, group, perm, counts)``: the sorted distinct relation ids ``[U]``, the group
        of every sample ``[B]`` (``unique[group] == rel``), a permutation ``[B]`` that sorts the
        batch by group, and the group sizes ``[U]``.
    """
    unique, group, counts = torch.unique(rel, sorted=True, return_inverse=True,
                                         return_counts=True)
    perm = torch.argsort(group, stable=True)
    return unique, group, perm, counts


def sort_groups(group: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    r"""``(perm, counts)`` of group ids ``group`` ``[B]`` in ``[0, num_groups)``: a stable
    permutation sorting the rows by group, and the group sizes ``[num_groups]``."""
    return torch.argsort(group, stable=True), torch.bincount(group, minlength=num_groups)


def relation_grouped_matmul(x: Tensor, group: Tensor, mats: Tensor,
                            method: str = "loop",
                            grouping: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    r"""Computes :math:`\mathbf{y}_b = \mathbf{x}_b \mathbf{M}_{g(b)}` for every row :math:`b`
    without materialising one :math:`d \times d'` matrix per row.

    Rows are sorted by group and every group is multiplied by its matrix once:
    ``method="loop"`` runs one :func:`torch.mm` per group (no padding, :math:`U` kernel
    calls); ``method="padded"`` scatters the groups into a zero-padded
    ``[U, max_count, d]`` tensor and runs one :func:`torch.bmm` (one call, but
    :math:`U \cdot \max_u n_u` rows of work, wasteful when group sizes are skewed).

    Args:
        x (Tensor): ``[B, d]`` rows.
        group (Tensor): ``[B]`` group id of every row, in ``[0, U)``.
        mats (Tensor): ``[U, d, d']`` one matrix per group.
        method (str): ``"loop"`` or ``"padded"``.
        grouping (Tuple[Tensor, Tensor], optional): precomputed ``(perm, counts)`` as
            returned by :func:`group_by_relation`.

    Returns:
        Tensor: ``[B, d']``.
    """
    perm, counts = grouping if grouping is not None else sort_groups(group, mats.size(0))
    x_sorted = x.index_select(0, perm)
    if method == "loop":
        sizes = counts.tolist()
        chunks = x_sorted.split(sizes, dim=0)
        # unbind, not mats[u]: the backward of U selects would build U zero [U, d, d]
        # gradients and add them up (O(U^2 d^2)); unbind's backward stacks once.
        out_sorted = torch.cat([c @ w for c, w, n in zip(chunks, mats.unbind(0), sizes)
                                if n > 0], dim=0)
    elif method == "padded":
        num_groups, max_count = mats.size(0), int(counts.max())
        offsets = torch.cumsum(counts, 0) - counts
        g_sorted = group.index_select(0, perm)
        pos = torch.arange(x.size(0), device=x.device) - offsets[g_sorted]
        padded = x_sorted.new_zeros(num_groups, max_count, x.size(1))
        padded = padded.index_put((g_sorted, pos), x_sorted)
        out_sorted = torch.bmm(padded, mats)[g_sorted, pos]
    else:
        raise ValueError(f"method must be 'loop' or 'padded', got {method!r}")
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return out_sorted.index_select(0, inverse)
