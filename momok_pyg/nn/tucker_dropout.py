r"""Tucker hidden dropout: the official per-sample masks without a ``[B, d, d]`` float tensor
(relation-grouped, chunked, boolean masks), and the grouped product whose backward pass adds
the gradient noise of those masks (the ``"moments"`` mode of :class:`TuckerScorer`)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from momok_pyg.nn.grouped import relation_grouped_matmul, sort_groups

#: resolution of the keep probability: masks are drawn as 15-bit uniform integers
_LEVELS = 1 << 15


def keep_threshold(p: float) -> int:
    r"""The integer threshold :math:`k` with which a 15-bit uniform integer :math:`u` keeps an
    entry iff :math:`u < k`; the keep probability is :math:`k / 2^{15}`, within
    :math:`2^{-16}` of :math:`1 - p`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return max(1, round((1.0 - p) * _LEVELS))


def draw_keep_masks(shape: Tuple[int, ...], p: float,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Boolean keep masks of ``shape``, every entry independently :obj:`True` with
    probability ``keep_threshold(p) / 2**15``.

    Four 15-bit draws come from one 64-bit random word (:meth:`torch.Tensor.random_`),
    about 7x faster on CPU than :func:`torch.bernoulli` of the same size.
    """
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=generator)
    u = words.view(torch.int16).bitwise_and_(_LEVELS - 1)[:n]
    # u <= k - 1 rather than u < k: k = 2**15 (p = 0) does not fit in int16
    return torch.le(u, keep_threshold(p) - 1).view(shape)


class _PerSampleHiddenDropout(torch.autograd.Function):
    r"""See :func:`per_sample_dropout_matmul`. Saves the inputs and ``[B, d, d']`` boolean
    masks (one byte per entry; a float copy per sample would be 4 and the contracted core
    per sample 4 more)."""

    @staticmethod
    def forward(ctx, x: Tensor, mats: Tensor, perm: Tensor, counts: Tensor, p: float,
                chunk: int, generator: Optional[torch.Generator]) -> Tensor:
        dtype = torch.promote_types(x.dtype, mats.dtype)
        x, mats = x.to(dtype), mats.to(dtype)
        counts = counts.tolist()
        xs = x.index_select(0, perm)
        masks = draw_keep_masks((x.size(0), ) + tuple(mats.shape[1:]), p, generator)
        scale = _LEVELS / keep_threshold(p)
        out = x.new_empty(x.size(0), mats.size(-1))
        with torch.autocast(x.device.type, enabled=False):
            for u, s, t in _chunks(counts, chunk):
                w = mats[u] * masks[s:t]  # [c, d, d'] this chunk's dropped copies
                torch.bmm(xs[s:t].unsqueeze(1), w, out=out[s:t].unsqueeze(1))
        out.mul_(scale)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        ctx.save_for_backward(xs, mats, perm, inverse, masks)
        ctx.counts, ctx.chunk, ctx.scale = counts, chunk, scale
        return out.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xs, mats, perm, inverse, masks = ctx.saved_tensors
        gs = grad_out.to(xs.dtype).index_select(0, perm) * ctx.scale
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.empty_like(xs) if need_x else None
        grad_w = torch.zeros_like(mats) if need_w else None
        with torch.autocast(xs.device.type, enabled=False):
            for u, s, t in _chunks(ctx.counts, ctx.chunk):
                m = masks[s:t]
                if need_x:  # dL/dx_b = (W ⊙ M_b) g_b
                    torch.bmm(mats[u] * m, gs[s:t].unsqueeze(2),
                              out=grad_x[s:t].unsqueeze(2))
                if need_w:  # dL/dW = Σ_b (x_b g_b^T) ⊙ M_b
                    outer = torch.bmm(xs[s:t].unsqueeze(2), gs[s:t].unsqueeze(1))
                    grad_w[u] += outer.mul_(m).sum(0)
        if grad_x is not None:
            grad_x = grad_x.index_select(0, inverse)
        return grad_x, grad_w, None, None, None, None, None


def _chunks(counts, chunk: int):
    r"""``(group, start, stop)`` of consecutive runs of at most ``chunk`` rows of one group
    in the group-sorted batch."""
    start = 0
    for u, n in enumerate(counts):
        for s in range(start, start + n, chunk):
            yield u, s, min(s + chunk, start + n)
        start += n


def per_sample_dropout_matmul(x: Tensor, group: Tensor, mats: Tensor, p: float,
                              chunk: int = 8,
                              generator: Optional[torch.Generator] = None,
                              grouping: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    r"""Computes :math:`\mathbf{q}_b = \mathbf{x}_b (\mathbf{M}_{g(b)} \odot
    \mathbf{D}_b) / \pi` with a fresh Bernoulli(:math:`\pi`) keep mask
    :math:`\mathbf{D}_b` for every row :math:`b` (:math:`\pi \approx 1 - p`, see
    :func:`keep_threshold`): dropout on a per-sample copy of the relation matrix, as the
    official ``TuckERLayer`` applies it.

    The rows are sorted by group and processed ``chunk`` rows at a time, so the dropped copies
    exist only for one chunk (``chunk × d × d'`` floats) instead of ``[B, d, d']``; the
    masks are kept as booleans for the backward pass. Gradients:
    :math:`\partial L / \partial \mathbf{x}_b = (\mathbf{M}_{g(b)} \odot \mathbf{D}_b)
    \mathbf{g}_b / \pi` and :math:`\partial L / \partial \mathbf{M}_u = \sum_{g(b)=u}
    (\mathbf{x}_b \mathbf{g}_b^\top) \odot \mathbf{D}_b / \pi`.

    Args:
        x (Tensor): ``[B, d]`` rows.
        group (Tensor): ``[B]`` group (relation) of every row, in ``[0, U)``.
        mats (Tensor): ``[U, d, d']`` one matrix per group.
        p (float): dropout probability in ``[0, 1)``.
        chunk (int): rows per chunk.
        generator (torch.Generator, optional): source of the masks.
        grouping (Tuple[Tensor, Tensor], optional): precomputed ``(perm, counts)`` as
            returned by :func:`~momok_pyg.nn.grouped.group_by_relation`.

    Returns:
        Tensor: ``[B, d']``.
    """
    keep_threshold(p)  # validates p
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    perm, counts = grouping if grouping is not None else sort_groups(group, mats.size(0))
    return _PerSampleHiddenDropout.apply(x, mats, perm, counts, p, chunk, generator)


class _GradientMomentNoise(torch.autograd.Function):
    r"""See :func:`gradient_noise_matmul`."""

    @staticmethod
    def forward(ctx, x: Tensor, mats: Tensor, group: Tensor, perm: Tensor, counts: Tensor,
                p: float, method: str) -> Tensor:
        ctx.save_for_backward(x, mats, group, perm, counts)
        ctx.p, ctx.method = p, method
        return relation_grouped_matmul(x, group, mats, method, (perm, counts))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, mats, group, perm, counts = ctx.saved_tensors
        c = ctx.p / (1.0 - ctx.p)
        g = grad_out.to(x.dtype)
        mats_t = mats.transpose(1, 2)
        grad_x = relation_grouped_matmul(g, group, mats_t, ctx.method, (perm, counts))
        var_x = relation_grouped_matmul(g * g, group, mats_t * mats_t, ctx.method,
                                        (perm, counts))
        grad_x = grad_x + torch.randn_like(grad_x) * (var_x.clamp_min(0) * c).sqrt()
        sizes = counts.tolist()
        xs, gs = x.index_select(0, perm), g.index_select(0, perm)
        grad_w = torch.zeros_like(mats)
        for u, (xu, gu) in enumerate(zip(xs.split(sizes), gs.split(sizes))):
            if xu.size(0) == 0:
                continue
            var = (xu * xu).t() @ (gu * gu)
            grad_w[u] = xu.t() @ gu + torch.randn_like(var) * (var * c).sqrt()
        return grad_x, grad_w, None, None, None, None, None


def gradient_noise_matmul(x: Tensor, group: Tensor, mats: Tensor, p: float,
                          grouping: Tuple[Tensor, Tensor], method: str = "loop") -> Tensor:
    r"""The relation-grouped product :math:`\mathbf{x}_b \mathbf{M}_{g(b)}` whose backward
    pass adds the gradient noise per-sample dropout masks on :math:`\mathbf{M}` would cause:
    independent Gaussian noise of variance :math:`\frac{p}{1-p} \sum_j M_{ij}^2 g_{bj}^2`
    on :math:`\partial L / \partial x_{bi}` and :math:`\frac{p}{1-p} \sum_{g(b)=u}
    x_{bi}^2 g_{bj}^2` on :math:`\partial L / \partial M_{u,ij}` (the variances of the
    official per-sample-mask gradients around their means). ``grouping`` is ``(perm,
    counts)`` of :func:`~momok_pyg.nn.grouped.group_by_relation`; ``method`` as in
    :func:`~momok_pyg.nn.grouped.relation_grouped_matmul`."""
    perm, counts = grouping
    return _GradientMomentNoise.apply(x, mats, group, perm, counts, p, method)
