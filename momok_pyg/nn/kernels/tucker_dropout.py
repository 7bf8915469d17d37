r"""Tucker hidden dropout: the official per-sample masks without a ``[B, d, d]`` tensor of any
kind (counter-based masks recomputed where they are used, fused kernels), and the grouped
product whose backward pass adds the gradient noise of those masks (the ``"moments"`` mode of
:class:`TuckerScorer`)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from momok_pyg.nn.kernels.fused import compile_enabled, compile_failed, run_compiled
from momok_pyg.nn.kernels.grouped import relation_grouped_matmul, sort_groups
from momok_pyg.nn.kernels.scratch import scratch

#: resolution of the keep probability: masks compare 15-bit uniform integers to a threshold
_LEVELS = 1 << 15

# SplitMix64 (Steele, Lea & Flood, 2014) constants as signed 64-bit integers
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
# lowbias32 (C. Wellons, "Prospecting for hash functions", 2018) constants as signed int32
_LB1 = 0x7FEB352D
_LB2 = 0x846CA68B - (1 << 32)
_GOLDEN32 = 0x9E3779B1 - (1 << 32)  # odd, 2**32 / golden ratio


def keep_threshold(p: float) -> int:
    r"""The integer threshold :math:`k` with which a 15-bit uniform integer :math:`u` keeps an
    entry iff :math:`u < k`; the keep probability is :math:`k / 2^{15}`, within
    :math:`2^{-16}` of :math:`1 - p`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return max(1, round((1.0 - p) * _LEVELS))


def keep_probability(p: float) -> float:
    r"""The keep probability ``keep_threshold(p) / 2**15`` the masks of this module draw
    (the inverted-dropout scale is its reciprocal)."""
    return keep_threshold(p) / _LEVELS


def draw_keep_masks(shape: Tuple[int, ...], p: float,
                    generator: Optional[torch.Generator] = None,
                    device: Optional[torch.device] = None) -> Tensor:
    r"""Boolean keep masks of ``shape``, every entry independently :obj:`True` with
    probability ``keep_threshold(p) / 2**15``, to be stored (unlike :func:`keep_masks`).

    Four 15-bit draws come from one 64-bit random word (:meth:`torch.Tensor.random_`),
    about 4x faster on CPU than :func:`torch.bernoulli` of the same size.
    """
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(
        generator=generator)
    u = words.view(torch.int16).bitwise_and_(_LEVELS - 1)[:n]
    # u <= k - 1 rather than u < k: k = 2**15 (p = 0) does not fit in int16
    return torch.le(u, keep_threshold(p) - 1).view(shape)


def dropout(x: Tensor, p: float, training: bool = True,
            generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Inverted dropout, :math:`\mathbf{x} \odot \mathbf{m} / \pi` with a fresh
    :func:`draw_keep_masks` mask :math:`\mathbf{m}` (keep probability :math:`\pi =`
    :func:`keep_probability` :math:`(p)`): :func:`torch.nn.functional.dropout` with masks
    drawn 4 at a time from 64-bit words, ~5x faster on CPU at ``[1024, 300]`` (0.6 vs
    2.9 ms), where ``bernoulli_`` draws one number per entry."""
    if not training or p == 0.0:
        keep_threshold(p)  # validates p
        return x
    keep = draw_keep_masks(tuple(x.shape), p, generator, x.device)
    return x * keep.to(x.dtype).mul_(1.0 / keep_probability(p))


def _shr(z: Tensor, s: int, bits: int = 64) -> Tensor:
    # logical right shift of int64 / int32 (torch's >> is arithmetic)
    return (z >> s) & ((1 << (bits - s)) - 1)


def splitmix64(counter: Tensor, seed: Tensor) -> Tensor:
    r"""Output number ``counter`` of the SplitMix64 generator started at ``seed``: the
    finaliser of :math:`s + c \cdot \gamma \bmod 2^{64}` (int64, wrapping). A bijection of
    the counter for a fixed seed (used here to turn a seed into a :func:`seed_key`)."""
    z = seed + counter * _GAMMA
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def seed_key(seed: Tensor) -> Tensor:
    r"""The 0-dim int32 key of a 0-dim int64 mask seed: the low half of :func:`splitmix64`
    :math:`(0)` started at ``seed`` (so that nearby seeds give unrelated keys); an int32
    tensor is taken to be a key already and returned as is. Callers of the fused kernels
    compute it once, outside them (inside, Inductor would recompute it for every entry)."""
    if seed.dtype == torch.int32:  # already a key
        return seed
    return splitmix64(torch.zeros_like(seed), seed).to(torch.int32)


def hash32(counter: Tensor, key: Tensor) -> Tensor:
    r"""A 32-bit integer hash of ``(counter * 0x9E3779B1) ^ key`` (int32, wrapping): C.
    Wellons' ``lowbias32`` finaliser (two multiplies, three xor-shifts). The odd
    multiplier spreads consecutive counters over all bits first: ``lowbias32(counter ^
    key)`` alone leaves masks 64 entries apart correlated (~0.002, for every key). A
    bijection of the counter for a fixed key; elementwise, so a fused kernel recomputes any
    entry of a mask anywhere, in any order, with 32-bit lanes."""
    x = (counter * _GOLDEN32) ^ key
    x = (x ^ _shr(x, 16, 32)) * _LB1
    x = (x ^ _shr(x, 15, 32)) * _LB2
    return x ^ _shr(x, 16, 32)


#: masks are addressed by int32 counters: at most this many entries per seed
MAX_MASK_ENTRIES = 1 << 31


def check_mask_entries(n: int) -> None:
    r"""Raises unless ``n`` mask entries fit the int32 counters of :func:`keep_masks`."""
    if n > MAX_MASK_ENTRIES:
        raise ValueError(f"a counter-based dropout mask of {n} entries is too large: at most "
                         f"2**31 entries per seed (int32 counters)")


def keep_masks(seed: Tensor, row0: Tensor, rows: int, shape: Tuple[int, int],
               threshold: int) -> Tensor:
    r"""Boolean keep masks ``[rows, d, d']`` of the rows ``row0, ..., row0 + rows - 1``.

    Entry :math:`(b, i, j)` has the counter :math:`c = (b d + i) d' + j` (int32) and is kept
    iff the low 15 bits of :func:`hash32` :math:`(c, k)` are below ``threshold``
    (:func:`keep_threshold`), :math:`k` the :func:`seed_key` of ``seed``: independently
    with probability ``threshold / 2**15``.

    Args:
        seed (Tensor): 0-dim int64 seed, drawn afresh for every product, or its int32
            :func:`seed_key`.
        row0 (Tensor): 0-dim integer index of the first row.
        rows (int): number of rows.
        shape (Tuple[int, int]): ``(d, d')`` of one mask.
        threshold (int): see :func:`keep_threshold`.
    """
    d, e = shape
    b = (torch.arange(rows, dtype=torch.int32, device=seed.device)
         + row0.to(torch.int32)).view(-1, 1, 1)
    i = torch.arange(d, dtype=torch.int32, device=seed.device).view(1, -1, 1)
    j = torch.arange(e, dtype=torch.int32, device=seed.device).view(1, 1, -1)
    c = (b * d + i) * e + j
    return (hash32(c, seed_key(seed)) & (_LEVELS - 1)) < threshold


def _keep_flat(seed: Tensor, start: int, n: int, threshold: int) -> Tensor:
    # entries start, ..., start + n - 1 of keep_masks, flat
    # (hash32 in place: the eager masks are drawn in large blocks)
    check_mask_entries(start + n)
    x = torch.arange(start, start + n, dtype=torch.int32, device=seed.device)
    x.mul_(_GOLDEN32).bitwise_xor_(seed_key(seed))
    t = torch.empty_like(x)
    for shift, mult in ((16, _LB1), (15, _LB2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=t)
        x.bitwise_xor_(t.bitwise_and_((1 << (32 - shift)) - 1))
        if mult is not None:
            x.mul_(mult)
    return x.bitwise_and_(_LEVELS - 1) < threshold


# The fused kernels: Inductor turns each into one loop nest that hashes, masks, multiplies and
# sums in registers; the [B, d, d'] operands below are never materialised.
def _fused_forward(xs: Tensor, mats: Tensor, group: Tensor, row0: Tensor, seed: Tensor,
                   threshold: int, scale: float) -> Tensor:
    # q_b = x_b (W_g(b) ⊙ D_b) * scale, group-sorted rows row0, row0 + 1, ...
    keep = keep_masks(seed, row0, xs.size(0), mats.shape[1:], threshold)
    return (xs.unsqueeze(2) * torch.where(keep, mats[group], 0.0)).sum(1) * scale


def _fused_grad_x(gs: Tensor, mats_t: Tensor, group: Tensor, row0: Tensor, seed: Tensor,
                  threshold: int, scale: float) -> Tensor:
    # dL/dx_b = (W_g(b) ⊙ D_b) g_b * scale, from the transposed matrices mats_t = W^T: the
    # loop then runs over j outside and vectorises the output index i, whose entries of W^T
    # are contiguous (as in _fused_forward); reducing over W's contiguous j instead takes
    # 1.8x as long (31 vs 17 ms at B = 1024, d = 300 on 2 cores)
    keep = keep_masks(seed, row0, gs.size(0), (mats_t.size(2), mats_t.size(1)), threshold)
    return (torch.where(keep, mats_t[group].transpose(1, 2), 0.0)
            * gs.unsqueeze(1)).sum(2) * scale


def _fused_grad_w(xs: Tensor, gs: Tensor, row0: Tensor, seed: Tensor, threshold: int,
                  scale: float) -> Tensor:
    # dL/dW_u = Σ_{g(b)=u} (x_b g_b^T) ⊙ D_b * scale, over the rows of one group
    keep = keep_masks(seed, row0, xs.size(0), (xs.size(1), gs.size(1)), threshold)
    return torch.where(keep, xs.unsqueeze(2) * gs.unsqueeze(1), 0.0).sum(0) * scale


_KERNELS = {"forward": _fused_forward, "grad_x": _fused_grad_x, "grad_w": _fused_grad_w}


def _fused(name: str, *args) -> Optional[Tensor]:
    r"""Runs kernel ``name`` as one :func:`torch.compile` (Inductor) loop, the masks computed
    in registers and never stored; :obj:`None` if compilation failed (once, with a warning)."""
    return run_compiled(_KERNELS[name], *args)


def flat_keep_masks(seed: Tensor, shape: Tuple[int, ...], threshold: int) -> Tensor:
    r"""Eager boolean keep masks of ``shape``: entry number :math:`c` (row-major) is kept iff
    the 15 low bits of :func:`hash32` :math:`(c, k)` are below ``threshold``, as
    :func:`keep_masks` decides it (a ``[rows, d, d']`` ``shape`` gives the masks of
    ``keep_masks(seed, 0, rows, (d, d'))``)."""
    return _keep_flat(seed, 0, math.prod(shape), threshold).view(shape)


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""A fresh 0-dim int64 seed of counter-based masks, drawn from ``generator`` (default:
    torch's global generator) and placed on ``device``."""
    seed_device = generator.device if generator is not None else "cpu"
    return torch.empty((), dtype=torch.int64, device=seed_device).random_(
        generator=generator).to(device)


def _all_masks(seed: Tensor, rows: int, shape, threshold: int, chunk: int) -> Tensor:
    # keep_masks of rows 0..rows-1, drawn chunk rows at a time (bounded temporaries)
    dd = shape[0] * shape[1]
    masks = torch.empty((rows, ) + tuple(shape), dtype=torch.bool, device=seed.device)
    for s, t in _blocks(rows, chunk):
        masks[s:t] = _keep_flat(seed, s * dd, (t - s) * dd, threshold).view(t - s, *shape)
    return masks


def _blocks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def _chunks(counts, chunk: int):
    r"""``(group, start, stop)`` of consecutive runs of at most ``chunk`` rows of one group
    in the group-sorted batch."""
    start = 0
    for u, n in enumerate(counts):
        for s in range(start, start + n, chunk):
            yield u, s, min(s + chunk, start + n)
        start += n


class _PerSampleHiddenDropout(torch.autograd.Function):
    r"""See :func:`per_sample_dropout_matmul`. Saves the inputs and the masks' 32-bit key:
    the masks are recomputed in the backward pass instead of stored."""

    @staticmethod
    def forward(ctx, x: Tensor, mats: Tensor, group: Tensor, perm: Tensor, counts: Tensor,
                p: float, chunk: int, generator: Optional[torch.Generator],
                use_compile: bool) -> Tensor:
        dtype = torch.promote_types(x.dtype, mats.dtype)
        x, mats = x.to(dtype), mats.to(dtype)
        check_mask_entries(x.size(0) * mats.size(1) * mats.size(2))
        seed = seed_key(draw_seed(x.device, generator))  # once, outside the kernels
        threshold = keep_threshold(p)
        scale = _LEVELS / threshold
        xs, gs = x.index_select(0, perm), group.index_select(0, perm)
        sizes = counts.tolist()
        masks = None
        with torch.autocast(x.device.type, enabled=False):
            out = _fused("forward", xs, mats, gs, seed.new_zeros(()), seed, threshold,
                         scale) if use_compile else None
            if out is None:  # eager: draw the masks once and keep them
                masks = _all_masks(seed, xs.size(0), mats.shape[1:], threshold, chunk)
                out = xs.new_empty(xs.size(0), mats.size(-1))
                for u, s, t in _chunks(sizes, chunk):
                    w = mats[u] * masks[s:t]  # [c, d, d'] this chunk's dropped copies
                    torch.bmm(xs[s:t].unsqueeze(1), w, out=out[s:t].unsqueeze(1))
                out.mul_(scale)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        ctx.save_for_backward(xs, mats, gs, perm, inverse, seed, masks)
        ctx.counts, ctx.chunk, ctx.threshold, ctx.scale = sizes, chunk, threshold, scale
        return out.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xs, mats, group, perm, inverse, seed, masks = ctx.saved_tensors
        g = grad_out.to(xs.dtype).index_select(0, perm)
        threshold, scale, chunk = ctx.threshold, ctx.scale, ctx.chunk
        fused = masks is None  # else the eager forward kept the masks
        grad_x = grad_w = None
        with torch.autocast(xs.device.type, enabled=False):
            if fused:
                # W^T of every group, in a buffer reused from step to step (scratch)
                mats_t = scratch("tucker_dropout.mats_t", (mats.size(0), mats.size(2),
                                                           mats.size(1)), mats.dtype,
                                 mats.device).copy_(mats.transpose(1, 2))
                grad_x = _fused("grad_x", g, mats_t, group,
                                seed.new_zeros(()), seed, threshold,
                                scale) if ctx.needs_input_grad[0] else None
                if compile_failed():  # failed just now: the eager kernels take over
                    fused = False
                    masks = _all_masks(seed, xs.size(0), mats.shape[1:], threshold, chunk)
            if fused and ctx.needs_input_grad[1]:
                grad_w = torch.empty_like(mats)
                start = 0
                for u, n in enumerate(ctx.counts):
                    if n == 0:  # a group without rows
                        grad_w[u].zero_()
                    else:
                        gw = _fused("grad_w", xs[start:start + n], g[start:start + n],
                                    seed.new_tensor(start), seed, threshold, scale)
                        if gw is None:  # failed just now
                            fused = False
                            masks = _all_masks(seed, xs.size(0), mats.shape[1:], threshold,
                                               chunk)
                            break
                        grad_w[u] = gw
                    start += n
            if not fused:  # eager, as in the forward pass
                gs = g * scale
                grad_x = torch.empty_like(xs) if ctx.needs_input_grad[0] else None
                grad_w = torch.zeros_like(mats) if ctx.needs_input_grad[1] else None
                for u, s, t in _chunks(ctx.counts, chunk):
                    m = masks[s:t]
                    if grad_x is not None:  # dL/dx_b = (W ⊙ D_b) g_b
                        torch.bmm(mats[u] * m, gs[s:t].unsqueeze(2),
                                  out=grad_x[s:t].unsqueeze(2))
                    if grad_w is not None:  # dL/dW = Σ_b (x_b g_b^T) ⊙ D_b
                        outer = torch.bmm(xs[s:t].unsqueeze(2), gs[s:t].unsqueeze(1))
                        grad_w[u] += outer.mul_(m).sum(0)
            if grad_x is not None:
                grad_x = grad_x.index_select(0, inverse)
        return grad_x, grad_w, None, None, None, None, None, None, None


def per_sample_dropout_matmul(x: Tensor, group: Tensor, mats: Tensor, p: float,
                              chunk: int = 16,
                              generator: Optional[torch.Generator] = None,
                              grouping: Optional[Tuple[Tensor, Tensor]] = None,
                              compile: Optional[bool] = None) -> Tensor:
    r"""Computes :math:`\mathbf{q}_b = \mathbf{x}_b (\mathbf{M}_{g(b)} \odot
    \mathbf{D}_b) / \pi` with a fresh Bernoulli(:math:`\pi`) keep mask
    :math:`\mathbf{D}_b` for every row :math:`b` (:math:`\pi \approx 1 - p`, see
    :func:`keep_threshold`): dropout on a per-sample copy of the relation matrix, as the
    official ``TuckERLayer`` applies it.

    The masks are counter-based (:func:`keep_masks`: entry :math:`(b, i, j)` of the
    group-sorted batch is a hash of one 64-bit seed drawn per call and of its position), so
    they are never stored: the forward kernel and the two backward kernels,

    .. math::
        \frac{\partial L}{\partial \mathbf{x}_b} = (\mathbf{M}_{g(b)} \odot \mathbf{D}_b)
        \mathbf{g}_b / \pi, \qquad
        \frac{\partial L}{\partial \mathbf{M}_u} = \sum_{g(b)=u}
        (\mathbf{x}_b \mathbf{g}_b^\top) \odot \mathbf{D}_b / \pi,

    each recompute the entries they need. With ``compile`` each kernel is one
    :func:`torch.compile` (Inductor) loop that hashes, masks, multiplies and sums in
    registers: no ``[B, d, d']`` tensor, float or boolean, exists. Without it the same
    kernels run eagerly on ``chunk`` rows at a time (same masks, slower).

    Args:
        x (Tensor): ``[B, d]`` rows.
        group (Tensor): ``[B]`` group (relation) of every row, in ``[0, U)``.
        mats (Tensor): ``[U, d, d']`` one matrix per group.
        p (float): dropout probability in ``[0, 1)``.
        chunk (int): rows per block of the eager kernels.
        generator (torch.Generator, optional): source of the seed.
        grouping (Tuple[Tensor, Tensor], optional): precomputed ``(perm, counts)`` as
            returned by :func:`~momok_pyg.nn.kernels.grouped.group_by_relation`.
        compile (bool, optional): fuse the kernels with :func:`torch.compile`; default
            :obj:`True` unless the environment sets ``MOMOK_PYG_COMPILE=0``. Falls back to
            the eager kernels, with a warning, when compilation fails.

    Returns:
        Tensor: ``[B, d']``.
    """
    keep_threshold(p)  # validates p
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    perm, counts = grouping if grouping is not None else sort_groups(group, mats.size(0))
    use_compile = compile_enabled() if compile is None else compile
    return _PerSampleHiddenDropout.apply(x, mats, group, perm, counts, p, chunk, generator,
                                         use_compile)


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
    counts)`` of :func:`~momok_pyg.nn.kernels.grouped.group_by_relation`; ``method`` as in
    :func:`~momok_pyg.nn.kernels.grouped.relation_grouped_matmul`."""
    perm, counts = grouping
    return _GradientMomentNoise.apply(x, mats, group, perm, counts, p, method)
