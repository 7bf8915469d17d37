r"""The fused attention fusion of :class:`~momok_pyg.nn.mujod.ModalityFusion` (paper Eq. 3):
its input dropout, per-head projections, attention and weighted sum in one custom autograd
function whose backward recomputes the dropped inputs (counter-based masks) instead of keeping
them, finishes one modality before the next and reuses scratch buffers. The values and
gradients equal those of the eager formulation (tests/test_nn_components.py)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .fused import compile_enabled, fused_or_eager, run_compiled
from .scratch import scratch
from .tucker_dropout import (
    check_mask_entries,
    draw_seed,
    flat_keep_masks,
    keep_masks,
    keep_threshold,
    seed_key,
)


# The fused kernels of the fusion's input dropout. Each runs as one torch.compile (Inductor)
# loop where a compiler is available (nn.kernels.fused.fused_or_eager); the masks are counter-based
# (tucker_dropout.keep_masks: entry (h, i, j) of [H, n, d] has the counter (h n + i) d + j),
# recomputed in registers and never stored.
# A kernel given ``out`` writes its result there (Inductor writes into it directly) and
# returns it.
def _dropped_heads_kernel(x: Tensor, seed: Tensor, heads: int, threshold: int, scale: float,
                          out: Optional[Tensor] = None) -> Tensor:
    # [H, n, d]: head h's dropped copy of x, times scale
    keep = keep_masks(seed, seed.new_zeros(()), heads, tuple(x.shape), threshold)
    xd = torch.where(keep, x * scale, 0.0)
    return xd if out is None else out.copy_(xd)


def _dropped_heads_eager(x: Tensor, seed: Tensor, heads: int, threshold: int, scale: float,
                         out: Optional[Tensor] = None) -> Tensor:
    keep = flat_keep_masks(seed, (heads, ) + tuple(x.shape), threshold)
    xd = torch.where(keep, x * scale, torch.zeros((), dtype=x.dtype, device=x.device))
    return xd if out is None else out.copy_(xd)


def _masked_head_sum_kernel(t: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    # sum_h D_h ⊙ t_h * scale, [H, n, d] -> [n, d]: the input gradient of _dropped_heads_kernel
    keep = keep_masks(seed, seed.new_zeros(()), t.size(0), tuple(t.shape[1:]), threshold)
    return torch.where(keep, t, 0.0).sum(0) * scale


def _masked_head_sum_t_kernel(t_t: Tensor, seed: Tensor, threshold: int, scale: float,
                              out_t: Tensor) -> Tensor:
    # the same sum of t_t = t.transpose(1, 2) [H, d, n], written into out_t, the [d, n] view
    # of an [n, d] result: with the loops over the contiguous n and the heads unrolled,
    # Inductor vectorises the hash (as a reduction over h of the transposed view it ran it
    # scalar: 26 vs 10 ms at H = 2, n = 15000, d = 384; so did a copy_ into a passed
    # contiguous [d, n] buffer: 16 ms)
    heads, d, n = t_t.shape
    keep = keep_masks(seed, seed.new_zeros(()), heads, (n, d), threshold).transpose(1, 2)
    out = torch.where(keep[0], t_t[0], 0.0)
    for h in range(1, heads):
        out = out + torch.where(keep[h], t_t[h], 0.0)
    return out_t.copy_(out * scale)


def _masked_head_sum_eager(t: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    keep = flat_keep_masks(seed, tuple(t.shape), threshold)
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device)).sum(0) * scale


def _projection_grad_kernel(g: Tensor, alpha: Tensor, dl: Optional[Tensor],
                            attn: Optional[Tensor], p: Tensor,
                            entity_dim: int) -> Tuple[Tensor, Tensor]:
    # dL/d(pre-ReLU projections) of one modality and its bias gradient (the sum over the
    # entity dimension); the arguments come broadcastable in either layout of p
    grad = g * alpha
    if dl is not None:
        grad = grad + dl * attn
    grad = torch.where(p > 0, grad, 0.0)
    return grad, grad.sum(dim=entity_dim, keepdim=True)


def _row_dots_kernel(p: Tensor, g: Tensor) -> Tensor:
    # (p * g).sum(-1): [H, n, o] x [n, o] -> [H, n], without the [H, n, o] product
    return (p * g).sum(-1)


def _dropped_heads(x: Tensor, seed: Tensor, heads: int, threshold: int, scale: float,
                   out: Optional[Tensor] = None) -> Tensor:
    r""":math:`\mathrm{drop}_h(\mathbf{x})` of every head, ``[H, n, d]``: ``x`` ``[n, d]`` times
    the counter-based keep masks of ``seed`` (:func:`head_dropout_masks`), times ``scale``;
    written into ``out`` (of any floating dtype) when it is given."""
    check_mask_entries(heads * x.numel())
    return fused_or_eager(_dropped_heads_kernel, x, seed_key(seed), heads, threshold, scale,
                           out, eager=_dropped_heads_eager)


def _masked_head_sum(t: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    r""":math:`\sum_h \mathbf{D}_h \odot \mathbf{t}_h \cdot` ``scale`` of ``t`` ``[H, n, d]``
    under the masks of :func:`_dropped_heads` (the gradient of its input). A ``t`` laid out
    ``[H, d, n]`` (the fusion's backward products) is summed in that layout, into the
    ``[n, d]`` result."""
    if t.transpose(1, 2).is_contiguous() and compile_enabled():
        out = t.new_empty(t.shape[1:])
        if run_compiled(_masked_head_sum_t_kernel, t.transpose(1, 2), seed_key(seed),
                        threshold, scale, out.t()) is not None:
            return out
    return fused_or_eager(_masked_head_sum_kernel, t, seed_key(seed), threshold, scale,
                           eager=_masked_head_sum_eager)


def _projected(x: Tensor, w: Tensor, b: Tensor, seed: Optional[Tensor], threshold: int,
               scale: float) -> Tensor:
    r""":math:`\mathrm{ReLU}(\mathrm{drop}_h(\mathbf{x})\mathbf{W}_h + \mathbf{b}_h)` of all
    heads, ``[H, n, o]``.

    With dropout (``seed``) it is computed transposed, :math:`\mathbf{P}_h^\top =
    \mathbf{W}_h^\top \mathrm{drop}_h(\mathbf{x})^\top`, and returned as a ``[H, n, o]``
    view of the ``[H, o, n]`` result: the product's long output dimension is then the
    entities' (``n``). On the 2-core AVX-512 benchmark machine MKL runs ``[15000, 300] @
    [300, 300]`` at ~110 GFLOP/s and its transpose at ~160 (sizes 256, 320 or 384: 175-185
    either way); the backward pass works in the same layout. Without dropout every head sees
    the same ``x``, and one
    ``[n, d] @ [d, H o]`` product (a strided ``[H, n, o]`` view of it) replaces the batched
    product over ``x`` expanded ``H`` times, which copies it and runs a slower kernel."""
    heads, out_dim = w.size(0), w.size(-1)
    if seed is not None:
        xd = _dropped_heads(x, seed, heads, threshold, scale,  # (scratch: used right here)
                            scratch("fusion.heads", (heads, ) + tuple(x.shape), x.dtype,
                                    x.device))
        return torch.baddbmm(b.transpose(1, 2), w.transpose(1, 2),
                             xd.transpose(1, 2)).relu_().transpose(1, 2)
    if heads == 1:
        return torch.baddbmm(b, x.unsqueeze(0), w).relu_()
    w_all = w.permute(1, 0, 2).reshape(w.size(1), heads * out_dim)
    out = torch.addmm(b.reshape(1, heads * out_dim), x, w_all).relu_()
    return out.view(x.size(0), heads, out_dim).transpose(0, 1)


def _scored(p: Tensor, a: Tensor) -> Tensor:
    r""":math:`\mathbf{P}\mathbf{a}` ``[H, n]`` of ``p`` ``[H, n, o]``; a ``p`` laid out
    ``[n, H, o]`` or ``[H, o, n]`` (from :func:`_projected`) is multiplied in that layout,
    without a copy."""
    if p.transpose(0, 1).is_contiguous():
        return (p.transpose(0, 1) @ a).t()
    if p.transpose(1, 2).is_contiguous():  # [H, 1, o] @ [H, o, n]
        return torch.bmm(a.view(1, 1, -1).expand(p.size(0), 1, -1),
                         p.transpose(1, 2)).squeeze(1)
    return p @ a


def _weighted_rows(p: Tensor, w: Tensor) -> Tensor:
    r""":math:`\sum_{h,i} w_{h,i} \mathbf{p}_{h,i}` ``[o]`` of ``p`` ``[H, n, o]`` and ``w``
    ``[H, n]`` (the attention vector's gradient), in ``p``'s layout, without a copy."""
    if p.transpose(1, 2).is_contiguous():  # [H, o, n] @ [H, n, 1]
        return torch.bmm(p.transpose(1, 2), w.unsqueeze(-1)).sum(0).squeeze(-1)
    return p.reshape(-1, p.size(-1)).t() @ w.reshape(-1)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    r"""Attention weights are computed in at least float32 (bf16 products under autocast)."""
    return torch.promote_types(dtype, torch.float32)


class _AttentionFusion(torch.autograd.Function):
    r"""The whole of :class:`ModalityFusion` in one autograd node: per modality
    :math:`\mathbf{P}_m = \mathrm{ReLU}(\mathrm{drop}_h(\mathbf{x}_m)\mathbf{W}_{h,m} +
    \mathbf{b}_{h,m})` ``[H, n, o]``, :math:`\alpha = \operatorname{softmax}_m(\mathbf{P}_m
    \mathbf{w})` (or :math:`1/M`), output :math:`\sum_{h,m} \alpha_{h,m} \mathbf{P}_{h,m}`
    and the head-mean of :math:`\alpha`.

    It saves the inputs, one 64-bit dropout seed per modality, :math:`\alpha` and the
    projections only: the dropout masks are counter-based (:func:`head_dropout_masks`), so the
    backward pass recomputes the dropped inputs in one fused kernel instead of keeping them
    or their masks. The backward finishes one modality (attention, ReLU and projection
    gradients in one buffer, both heads' weight and input gradients in one batched product
    each) before starting the next, so at most one ``[H, n, o]`` gradient is alive; plain
    autograd keeps every modality's projection gradient, their accumulation and the dropped
    ``[H, n, d]`` inputs at once. The dropped inputs (forward and backward) and the backward's
    ``[H, d, n]`` products share one :func:`~momok_pyg.nn.kernels.scratch.scratch` buffer,
    reused from step to step: written into fresh pages instead, the dropout kernel took 11 ms
    rather than 2.5 ms at ``n = 15000, d = 300`` (2-core benchmark machine). With
    ``torch.autocast`` the products run in the autocast dtype, as they would outside this
    function."""
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, threshold: int, scale: float, attn: Optional[Tensor],
                *flat: Optional[Tensor]):
        xs, ws, bs, seeds = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        proj = [_projected(x, w, b, seed, threshold, scale)
                for x, w, b, seed in zip(xs, ws, bs, seeds)]
        num_m, dtype = len(proj), proj[0].dtype
        if attn is None:
            alpha = torch.full(proj[0].shape[:2] + (num_m, ), 1.0 / num_m,
                               dtype=_accumulate_dtype(dtype), device=proj[0].device)
        else:
            logits = torch.stack([_scored(p, attn.to(dtype)) for p in proj], dim=-1)
            alpha = torch.softmax(logits.to(_accumulate_dtype(dtype)), dim=-1)  # [H, n, M]
        alpha_c = alpha.to(dtype)
        fused = proj[0] * alpha_c[..., 0:1]
        for i in range(1, num_m):
            fused.addcmul_(proj[i], alpha_c[..., i:i + 1])
        ctx.threshold, ctx.scale, ctx.num_m = threshold, scale, num_m
        ctx.save_for_backward(attn, alpha, *xs, *ws, *seeds, *proj)
        return fused.sum(0), alpha.mean(dim=0)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_fused: Tensor, grad_weights: Optional[Tensor]):
        attn, alpha, *rest = ctx.saved_tensors
        num_m, threshold, scale = ctx.num_m, ctx.threshold, ctx.scale
        xs, ws = rest[:num_m], rest[num_m:2 * num_m]
        seeds, proj = rest[2 * num_m:3 * num_m], rest[3 * num_m:]
        heads, dtype = alpha.size(0), proj[0].dtype
        g = grad_fused.to(dtype)
        alpha_c = alpha.to(dtype)
        dl = grad_attn = None
        if attn is not None:  # softmax backward: dl = alpha * (dalpha - sum_j alpha_j dalpha_j)
            dalpha = torch.stack([fused_or_eager(_row_dots_kernel, p, g) for p in proj],
                                 dim=-1).to(alpha.dtype)
            if grad_weights is not None:
                dalpha = dalpha + grad_weights.unsqueeze(0) / heads
            dl = alpha * (dalpha - (alpha * dalpha).sum(-1, keepdim=True))
            grad_attn = torch.zeros(attn.shape, dtype=alpha.dtype, device=attn.device)
        a_c = None if attn is None else attn.to(dtype)
        grads = []
        for i in range(num_m):
            x, w, seed, p = xs[i], ws[i], seeds[i], proj[i]
            dl_i = None
            if dl is not None:
                dl_i = dl[..., i]
                grad_attn += _weighted_rows(p.to(alpha.dtype), dl_i)
                dl_i = dl_i.to(dtype)
            want_x = ctx.needs_input_grad[3 + 4 * i]
            if seed is not None:  # P^T layout (see _projected); dropped inputs recomputed
                # one pass: attention and fusion-weight terms, ReLU', bias gradient; [H, o, n]
                grad_pt, grad_b = fused_or_eager(
                    _projection_grad_kernel, g.t(), alpha_c[..., i].unsqueeze(1),
                    None if dl_i is None else dl_i.unsqueeze(1),
                    None if a_c is None else a_c.unsqueeze(-1), p.transpose(1, 2), 2)
                grad_b = grad_b.transpose(1, 2)
                xd = _dropped_heads(x, seed, heads, threshold, scale,
                                    scratch("fusion.heads", (heads, ) + tuple(x.shape), dtype,
                                            x.device))
                grad_w = torch.bmm(grad_pt, xd).transpose(1, 2)  # (G^T X_d)^T
                del xd
                if want_x:  # [H, d, n] products, in the buffer xd had
                    work = scratch("fusion.heads", (heads, w.size(1), x.size(0)), dtype,
                                   x.device)
                    torch.bmm(w.to(dtype), grad_pt, out=work)
                    del grad_pt  # (before the sum's [n, d] output: the step's peak is here)
                    grad_x = _masked_head_sum(work.transpose(1, 2), seed, threshold, scale)
                else:
                    del grad_pt
                    grad_x = None
            else:  # every head sees x itself
                grad_p, grad_b = fused_or_eager(
                    _projection_grad_kernel, g, alpha_c[..., i].unsqueeze(-1),
                    None if dl_i is None else dl_i.unsqueeze(-1), a_c, p, 1)
                xt = x.to(dtype).t()
                grad_w = torch.stack([xt @ grad_p[h] for h in range(heads)])
                grad_x = (sum(grad_p[h] @ w[h].to(dtype).t() for h in range(heads))
                          if want_x else None)
                del grad_p
            grads += [None if grad_x is None else grad_x.to(x.dtype), grad_w.to(w.dtype),
                      grad_b.to(w.dtype).contiguous(), None]
        return (None, None, None if grad_attn is None else grad_attn.to(attn.dtype),
                *grads)


def head_dropout_seed(x: Tensor, p: float, training: bool) -> Optional[Tensor]:
    r"""A fresh 64-bit seed (from the global generator) of :class:`ModalityFusion`'s input
    dropout of ``x``, :obj:`None` when no dropout applies."""
    if not training or p == 0.0:
        return None
    return draw_seed(x.device)


def head_dropout_masks(heads: int, x: Tensor, p: float, training: bool) -> Optional[Tensor]:
    r"""The boolean keep masks ``[H, n, d]`` :class:`ModalityFusion` applies to ``x`` ``[n, d]``
    when it draws the next seed (:func:`head_dropout_seed`) from the global generator;
    :obj:`None` when no dropout applies. They are counter-based: entry :math:`(h, i, j)` is
    kept iff a hash of the seed and of its position :math:`(h n + i) d + j` falls under the
    keep threshold (:func:`~momok_pyg.nn.kernels.tucker_dropout.keep_masks`, keep probability
    :func:`~momok_pyg.nn.kernels.tucker_dropout.keep_probability` :math:`\approx 1 - p`), so the
    fusion recomputes them where they are needed instead of storing them."""
    seed = head_dropout_seed(x, p, training)
    if seed is None:
        return None
    return flat_keep_masks(seed, (heads, ) + tuple(x.shape), keep_threshold(p))


def attention_fusion(threshold: int, scale: float, attn: Optional[Tensor],
                     *flat: Optional[Tensor]):
    r"""``(J [n, o], weights [n, M])`` of the fusion: ``flat`` holds ``x_m, W_m, b_m, seed_m``
    for every modality in order (``seed_m`` ``None``: no dropout), ``attn`` the attention
    vector (``None``: mean fusion), ``threshold`` / ``scale`` the dropout's keep threshold and
    ``1 / keep probability``."""
    return _AttentionFusion.apply(threshold, scale, attn, *flat)
