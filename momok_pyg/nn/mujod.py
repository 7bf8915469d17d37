r"""Multi-modal joint decision, MuJoD (paper Eq. 3-6)."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import ModuleDict, Parameter, ParameterDict

from .fused import compile_enabled, fused_or_eager, run_compiled
from .loss import LOSSES, check_out_buffer, linear_one_to_n_loss, one_to_n_loss, product_into
from .scratch import scratch
from .tucker import TuckerScorer
from .tucker_dropout import (
    check_mask_entries,
    draw_seed,
    flat_keep_masks,
    keep_masks,
    keep_probability,
    keep_threshold,
    seed_key,
)

JOINT = "joint"
FUSIONS = ("attention", "mean")
AGGREGATES = ("sum", "mean_sigmoid")


# The fused kernels of the fusion's input dropout. Each runs as one torch.compile (Inductor)
# loop where a compiler is available (nn.fused.fused_or_eager); the masks are counter-based
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
    ``[H, d, n]`` products share one :func:`~momok_pyg.nn.scratch.scratch` buffer, reused from
    step to step: written into fresh pages instead, the dropout kernel took 11 ms rather than
    2.5 ms at ``n = 15000, d = 300`` (2-core benchmark machine). With ``torch.autocast`` the
    products run in the autocast dtype, as they would outside this function."""
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
                      grad_b.to(w.dtype), None]
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
    keep threshold (:func:`~momok_pyg.nn.tucker_dropout.keep_masks`, keep probability
    :func:`~momok_pyg.nn.tucker_dropout.keep_probability` :math:`\approx 1 - p`), so the
    fusion recomputes them where they are needed instead of storing them."""
    seed = head_dropout_seed(x, p, training)
    if seed is None:
        return None
    return flat_keep_masks(seed, (heads, ) + tuple(x.shape), keep_threshold(p))


class ModalityFusion(torch.nn.Module):
    r"""Attention fusion of per-modality embeddings into one joint embedding (paper Eq. 3).

    Every modality :math:`m` is projected by :math:`H` heads,
    :math:`\mathbf{p}_{h,m} = \mathrm{ReLU}(\mathbf{W}_{h,m}\,\mathrm{drop}(\mathbf{x}_m) +
    \mathbf{b}_{h,m})`, scored by one attention vector :math:`\mathbf{w}` shared by all
    heads and modalities, and fused as

    .. math::
        \mathbf{J} = \sum_{h=1}^{H} \sum_{m \in \mathcal{M}} \alpha_{h,m}\,\mathbf{p}_{h,m},
        \qquad \alpha_{h,m} = \operatorname{softmax}_m\!\left(\mathbf{w}^\top
        \mathbf{p}_{h,m}\right),

    which is the official ``ModalFusionLayer`` (``multi=2`` heads, dropout 0.2) generalised to
    any set of modalities. ``fusion="mean"`` replaces :math:`\alpha` by :math:`1/|\mathcal{M}|`
    (the paper's "w/o adaptive fusion" ablation).

    Args:
        in_dims (Mapping[str, int]): Input size of every modality, in fusion order.
        out_dim (int): Joint size.
        heads (int): :math:`H`.
        dropout (float): Input dropout of every projection (one mask per head).
        fusion (str): ``"attention"`` or ``"mean"``.
    """
    def __init__(self, in_dims: Mapping[str, int], out_dim: int, heads: int = 2,
                 dropout: float = 0.2, fusion: str = "attention"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if len(in_dims) == 0:
            raise ValueError("ModalityFusion needs at least one modality")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"fusion dropout must be in [0, 1), got {dropout}")
        self.modalities: List[str] = list(in_dims)
        self.in_dims = dict(in_dims)
        self.out_dim = out_dim
        self.heads = heads
        self.dropout = dropout
        self.fusion = fusion
        self.weight = ParameterDict(
            {m: Parameter(torch.empty(heads, d, out_dim)) for m, d in in_dims.items()})
        self.bias = ParameterDict(
            {m: Parameter(torch.empty(heads, 1, out_dim)) for m in in_dims})
        self.attn = Parameter(torch.empty(out_dim)) if fusion == "attention" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m, d in self.in_dims.items():  # torch.nn.Linear's default init
            bound = 1.0 / math.sqrt(d)
            torch.nn.init.uniform_(self.weight[m], -bound, bound)
            torch.nn.init.uniform_(self.bias[m], -bound, bound)
        if self.attn is not None:
            bound = 1.0 / math.sqrt(self.out_dim)
            torch.nn.init.uniform_(self.attn, -bound, bound)

    def forward(self, xs: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
        r"""Fuses ``{m: [n, d_m]}`` into ``([n, out_dim], weights [n, M])``, the weights being
        :math:`\alpha` averaged over heads (columns in :attr:`modalities` order)."""
        threshold = keep_threshold(self.dropout)
        scale = 1.0 / keep_probability(self.dropout) if self.training else 1.0
        flat: List[Optional[Tensor]] = []
        for m in self.modalities:  # seeds drawn in modality order
            seed = head_dropout_seed(xs[m], self.dropout, self.training)
            flat += [xs[m], self.weight[m], self.bias[m], seed]
        return _AttentionFusion.apply(threshold, scale, self.attn, *flat)

    def extra_repr(self) -> str:
        return (f"{self.in_dims}, {self.out_dim}, "
                f"heads={self.heads}, fusion={self.fusion!r}")


class MuJoD(torch.nn.Module):
    r"""Multi-modal Joint Decision (paper Eq. 3-6).

    Each modality :math:`m \in \mathcal{M}` (structure and feature modalities) and the joint
    modality :math:`J` has its own :class:`TuckerScorer`
    :math:`\phi_m(h, r, t)` (Eq. 4). The joint entity embedding is the
    :class:`ModalityFusion` of the modality embeddings (Eq. 3); the joint *relation*
    embedding is fused the same way (a second :class:`ModalityFusion`, own parameters) from
    the modalities' relation tables, as in the official code (``fuse_r``); the paper does
    not say how :math:`J`'s relation embedding is obtained.

    Training (Eq. 5): the per-modality 1-N losses are summed,
    :math:`\mathcal{L}_{kgc} = \sum_{m \in \mathcal{M} \cup \{J\}} \mathcal{L}_m`, with

    * ``loss="ce"`` (paper): softmax cross-entropy over all :math:`N` entities against the
      normalised multi-hot target :math:`\mathbf{y} / \lVert\mathbf{y}\rVert_1`
      (optionally label-smoothed towards uniform);
    * ``loss="bce"`` (official code): mean binary cross-entropy of
      :math:`\sigma(\phi_m)` against :math:`(1 - \varepsilon)\,\mathbf{y} + 1/N`
      (the official data loader applies :math:`\varepsilon = 0.1`).

    Inference (Eq. 6): ``aggregate="sum"`` (paper) scores
    :math:`S(h, r, t) = \sum_m \phi_m(h, r, t)`; ``aggregate="mean_sigmoid"`` (official)
    uses :math:`\frac{1}{|\mathcal{M}|+1}\sum_m \sigma(\phi_m)`.

    Args:
        modality_dims (Mapping[str, int]): Entity embedding size of every modality.
        num_relations (int): Relation table rows (``2R``).
        rel_dim (int): Relation embedding size of every scorer (also :math:`J`'s).
        joint_dim (int): Size of :math:`J`.
        joint (bool): Score the joint modality.
        fusion (str): ``"attention"`` or ``"mean"`` (ablation "w/o adaptive fusion").
        fusion_heads (int), fusion_dropout (float): :class:`ModalityFusion` settings.
        loss (str): ``"ce"`` or ``"bce"``.
        label_smoothing (float, optional): :math:`\varepsilon`; :obj:`None` = 0.1 for
            ``"bce"`` and 0 for ``"ce"``.
        aggregate (str): ``"sum"`` or ``"mean_sigmoid"``.
        **scorer_kwargs: Passed to every :class:`TuckerScorer` (dropouts, ``batch_norm``,
            ``grouped``).
    """
    def __init__(self, modality_dims: Mapping[str, int], num_relations: int, rel_dim: int,
                 joint_dim: int, joint: bool = True, fusion: str = "attention",
                 fusion_heads: int = 2, fusion_dropout: float = 0.2, loss: str = "ce",
                 label_smoothing: Optional[float] = None, aggregate: str = "sum",
                 **scorer_kwargs):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if JOINT in modality_dims:
            raise ValueError(f"'{JOINT}' is reserved for the joint modality")
        if len(modality_dims) == 0:
            raise ValueError("MuJoD needs at least one modality")
        if label_smoothing is None:
            label_smoothing = 0.1 if loss == "bce" else 0.0
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.modalities: List[str] = list(modality_dims)
        self.joint = joint
        self.loss_type = loss
        self.label_smoothing = float(label_smoothing)
        self.aggregate_type = aggregate
        self.scorers = ModuleDict({
            m: TuckerScorer(num_relations, d, rel_dim, **scorer_kwargs)
            for m, d in modality_dims.items()
        })
        if joint:
            self.scorers[JOINT] = TuckerScorer(num_relations, joint_dim, rel_dim,
                                               rel_embedding=False, **scorer_kwargs)
            self.entity_fusion = ModalityFusion(modality_dims, joint_dim, fusion_heads,
                                                fusion_dropout, fusion)
            self.relation_fusion = ModalityFusion({m: rel_dim for m in modality_dims},
                                                  rel_dim, fusion_heads, fusion_dropout,
                                                  fusion)
        else:
            self.entity_fusion = self.relation_fusion = None
        self.score_modalities: List[str] = self.modalities + ([JOINT] if joint else [])

    def reset_parameters(self) -> None:
        for module in self.scorers.values():
            module.reset_parameters()
        for module in (self.entity_fusion, self.relation_fusion):
            if module is not None:
                module.reset_parameters()

    def joint_embedding(self, embs: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
        r""":math:`\mathbf{J}` of ``{m: [n, d_m]}``: ``([n, joint_dim], weights [n, M])``."""
        if self.entity_fusion is None:
            raise RuntimeError("joint=False: there is no joint modality")
        return self.entity_fusion(embs)

    def joint_relation_table(self) -> Tensor:
        r"""Joint relation table ``[2R, rel_dim]`` fused from the modalities' tables."""
        tables = {m: self.scorers[m].rel_emb.weight for m in self.modalities}
        return self.relation_fusion(tables)[0]

    def relation_matrices(self) -> Dict[str, Tensor]:
        r""":math:`\mathbf{W}_r` of *all* relations for every scored modality,
        ``{m: [2R, d_m, d_m]}`` (for reuse across the batches of an evaluation pass)."""
        mats = {m: self.scorers[m].relation_matrices(self.scorers[m].rel_emb.weight)
                for m in self.modalities}
        if self.joint:
            mats[JOINT] = self.scorers[JOINT].relation_matrices(self.joint_relation_table())
        return mats

    def queries(self, heads: Mapping[str, Tensor], rel: Tensor,
                all_matrices: Optional[Mapping[str, Tensor]] = None
                ) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        r"""Tucker queries :math:`\mathbf{q}_m = \mathbf{e}_{h,m}^\top \mathbf{W}_{r,m}`
        ``{m: [B, d_m]}`` of every scored modality (the joint head is fused here), and the
        joint fusion weights ``[B, M]`` of the heads (:obj:`None` without joint).
        ``all_matrices`` optionally holds :meth:`relation_matrices`."""
        mats = all_matrices or {}
        q = {m: self.scorers[m].query(heads[m], rel, all_matrices=mats.get(m))
             for m in self.modalities}
        weights = None
        if self.joint:
            joint_head, weights = self.joint_embedding(heads)
            table = None if JOINT in mats else self.joint_relation_table()
            q[JOINT] = self.scorers[JOINT].query(joint_head, rel, rel_table=table,
                                                 all_matrices=mats.get(JOINT))
        return q, weights

    def forward(self, heads: Mapping[str, Tensor], rel: Tensor,
                candidates: Mapping[str, Tensor],
                all_matrices: Optional[Mapping[str, Tensor]] = None
                ) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        r"""Scores every candidate for the queries ``(h, rel, ?)``.

        Args:
            heads (Mapping[str, Tensor]): ``{m: [B, d_m]}`` head embeddings per modality.
            rel (Tensor): ``[B]`` relation ids (``2R`` space).
            candidates (Mapping[str, Tensor]): ``{m: [N, d_m]}`` candidate embeddings per
                modality, plus ``"joint"`` (from :meth:`joint_embedding`) when ``joint``.
            all_matrices (Mapping[str, Tensor], optional): :meth:`relation_matrices`.

        Returns:
            ``(scores, weights)``: ``{m: [B, N]}`` logits per scored modality and the
            joint fusion weights ``[B, M]`` of the heads (:obj:`None` without joint).
        """
        q, weights = self.queries(heads, rel, all_matrices)
        return {m: q[m] @ candidates[m].t() for m in self.score_modalities}, weights

    def forward_loss(self, heads: Mapping[str, Tensor], rel: Tensor,
                     candidates: Mapping[str, Tensor], target: Tensor
                     ) -> Tuple[Tensor, Optional[Tensor]]:
        r"""``(loss(forward(heads, rel, candidates)[0], target), weights)`` with the same
        value and gradients, but no ``[B, N]`` score tensor kept for backward (each
        modality's scores, loss and score gradient live only inside
        :func:`~momok_pyg.nn.loss.linear_one_to_n_loss`). The training step's path."""
        q, weights = self.queries(heads, rel)
        # one [B, N] scratch buffer for all modalities' scores and score gradients
        first = q[self.score_modalities[0]]
        scratch = torch.empty(first.size(0), candidates[self.score_modalities[0]].size(0),
                              device=first.device)
        loss = sum(linear_one_to_n_loss(q[m], candidates[m], target, self.loss_type,
                                        self.label_smoothing, out=scratch)
                   for m in self.score_modalities)
        return loss, weights

    def check_modalities(self, modalities: Optional[Sequence[str]]) -> List[str]:
        r"""Validates a subset of :attr:`score_modalities` (:obj:`None` = all)."""
        modalities = list(self.score_modalities if modalities is None else modalities)
        bad = [m for m in modalities if m not in self.score_modalities]
        if bad or not modalities:
            raise KeyError(f"cannot aggregate modalities {bad or modalities}; scored "
                           f"modalities are {self.score_modalities}")
        return modalities

    def aggregate_queries(self, q: Mapping[str, Tensor], candidates: Mapping[str, Tensor],
                          modalities: Optional[Sequence[str]] = None,
                          concat: Optional[Dict[tuple, Tensor]] = None,
                          out: Optional[Tensor] = None) -> Tensor:
        r"""The joint decision ``[B, N]`` straight from queries and candidates. For
        ``aggregate="sum"``, :math:`\sum_m \mathbf{q}_m \mathbf{E}_m^\top` is one matmul of
        the concatenated queries and candidates (same FLOPs, no per-modality ``[B, N]``
        tensors). ``concat`` is an optional memo of concatenated candidate tables, keyed by
        the modality tuple. ``out`` is an optional float32 ``[B, N]`` tensor to write the
        decision into (and return): an evaluation loop reusing one buffer saves a fresh
        ``[B, N]`` allocation, i.e. its page faults, per batch."""
        modalities = self.check_modalities(modalities)
        first = q[modalities[0]]
        check_out_buffer(out, (first.size(0), candidates[modalities[0]].size(0)), first.device)
        if self.aggregate_type == "sum":
            qs = torch.cat([q[m] for m in modalities], dim=1)
            key = tuple(modalities)
            cs = None if concat is None else concat.get(key)
            if cs is None:
                cs = torch.cat([candidates[m] for m in modalities], dim=1)
                if concat is not None:
                    concat[key] = cs
            return product_into(qs, cs.t(), out)[0]
        scores = self.aggregate({m: q[m] @ candidates[m].t() for m in modalities}, modalities)
        return scores if out is None else out.copy_(scores)

    def loss(self, scores: Mapping[str, Tensor], target: Tensor) -> Tensor:
        r""":math:`\sum_m \mathcal{L}_m` over the given modalities' scores; ``target`` is the
        multi-hot ``[B, N]`` (1 = true tail), dense or sparse (COO/CSR; the trainer passes
        CSR). See :func:`~momok_pyg.nn.loss.one_to_n_loss`."""
        if len(scores) == 0:
            raise ValueError("no scores to compute a loss on")
        return sum(one_to_n_loss(s.float(), target, self.loss_type, self.label_smoothing)
                   for s in scores.values())

    def aggregate(self, scores: Mapping[str, Tensor],
                  modalities: Optional[Sequence[str]] = None) -> Tensor:
        r"""Joint decision ``[B, N]`` over ``modalities`` (default: all in ``scores``)."""
        modalities = list(scores) if modalities is None else list(modalities)
        missing = [m for m in modalities if m not in scores]
        if missing or not modalities:
            raise KeyError(f"cannot aggregate modalities {missing or modalities}; scored "
                           f"modalities are {list(scores)}")
        if self.aggregate_type == "sum":
            return torch.stack([scores[m].float() for m in modalities]).sum(0)
        return torch.stack([torch.sigmoid(scores[m].float()) for m in modalities]).mean(0)
