r"""The 1-N training losses of MuJoD (paper Eq. 5) on sparse multi-hot targets.

A 1-N batch scores :math:`B` queries against all :math:`N` entities, but each query has only a
handful of answers. The two losses below take the answers as a sparse ``[B, N]`` target and
never build a dense target, a log-softmax or any other ``[B, N]`` tensor in the forward pass
beyond the scores themselves; the backward pass builds one ``[B, N]`` gradient. Both equal
their dense :mod:`torch.nn.functional` counterparts (asserted in ``tests/test_nn.py``).

For weights :math:`y_{bt} \ge 0` (1 for a multi-hot answer, 0 elsewhere) and label smoothing
:math:`\varepsilon`:

* ``"ce"``: softmax cross-entropy against :math:`\tilde{\mathbf{y}}_b = (1-\varepsilon)
  \mathbf{y}_b / \lVert\mathbf{y}_b\rVert_1 + \varepsilon / N` (the definition of
  ``F.cross_entropy(score, y / |y|, label_smoothing=eps)``),

  .. math::
      \ell_b = c_b \operatorname{logsumexp}(\mathbf{s}_b) - \tilde{\mathbf{y}}_b^\top
      \mathbf{s}_b, \qquad c_b = \textstyle\sum_t \tilde{y}_{bt}, \qquad
      \frac{\partial \ell_b}{\partial \mathbf{s}_b} = c_b\,\mathrm{softmax}(\mathbf{s}_b)
      - \tilde{\mathbf{y}}_b,

* ``"bce"``: mean binary cross-entropy of :math:`\sigma(s_{bt})` against
  :math:`\tilde{y}_{bt} = (1-\varepsilon) y_{bt} + 1/N` (the official target),

  .. math::
      \ell = \frac{1}{BN} \sum_{b,t} \mathrm{softplus}(s_{bt}) - \tilde{y}_{bt} s_{bt},
      \qquad \frac{\partial \ell}{\partial s_{bt}} = \frac{\sigma(s_{bt}) -
      \tilde{y}_{bt}}{BN},

with :math:`\tilde{\mathbf{y}}_b^\top \mathbf{s}_b` computed from the non-zeros of
:math:`\mathbf{y}` plus :math:`\sum_t s_{bt}`. The ``"ce"`` loss is averaged over the batch.

The softmax part of the ``"ce"`` gradient is flushed to zero below the smallest normal float
(:func:`flush_subnormal_`; the fused loss also raises scores more than
:math:`\log(B \cdot 1.2 \cdot 10^{-38})` below the row's best to that floor before the
exponential, whose gradient the flush then zeroes). Once a model separates its scores, many
:math:`\mathrm{softmax}(\mathbf{s}_b)_t / B` fall below :math:`1.2 \cdot 10^{-38}`, and x86
CPUs compute with such subnormal floats many times slower: the gradient products over
:math:`\mathbf{G}` slowed a MoMoK epoch on MKG-W from 22 s to 48 s within 70 epochs
(``benchmarks/bench_subnormal.py``). A value that small changes no gradient entry by more
than :math:`10^{-38}` times an embedding.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "bce")


def flush_subnormal_(x: Tensor) -> Tensor:
    r"""Sets the entries of the non-negative float tensor :obj:`x` that are below the smallest
    normal float of its dtype (subnormals) to zero, in place (one pass, no allocation): what a
    CPU's flush-to-zero mode would do, but for this tensor only and in every thread."""
    tiny = torch.finfo(x.dtype).tiny
    return torch.threshold_(x, float(torch.nextafter(torch.tensor(tiny, dtype=x.dtype),
                                                      torch.tensor(0.0, dtype=x.dtype))), 0.0)


def sparse_rows(target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``(row, col, value)`` of the non-zeros of a ``[B, N]`` target, dense or sparse
    (COO or CSR)."""
    if target.layout == torch.sparse_csr:
        crow, col = target.crow_indices(), target.col_indices()
        row = torch.repeat_interleave(torch.arange(target.size(0), device=crow.device),
                                      crow.diff())
        return row, col, target.values()
    if target.layout == torch.sparse_coo:
        target = target.coalesce()
        row, col = target.indices()
        return row, col, target.values()
    row, col = target.nonzero(as_tuple=True)
    return row, col, target[row, col]


def _loss_value(score: Tensor, row: Tensor, col: Tensor, value: Tensor, kind: str,
                eps: float) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    r"""The loss of float ``score`` ``[B, N]`` and what :func:`_loss_grad` needs."""
    B, N = score.shape
    if kind == "ce":
        coef, weight, linear = _ce_terms(score, row, col, value, eps)
        lse = torch.logsumexp(score, dim=1)
        return (coef * lse - linear).mean(), (lse, coef, weight)
    pos = (score[row, col] * value).sum() * (1.0 - eps) + score.sum() / N
    return (F.softplus(score).sum() - pos) / (B * N), ()


def _ce_terms(score: Tensor, row: Tensor, col: Tensor, value: Tensor,
              eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``(c, w, l)`` of ``"ce"``, each ``[B]``: :math:`c_b`, the weight
    :math:`w_b = (1-\varepsilon) / \lVert\mathbf{y}_b\rVert_1` of an answer and the linear
    term :math:`\tilde{\mathbf{y}}_b^\top \mathbf{s}_b` (so :math:`\ell_b = c_b
    \operatorname{logsumexp}(\mathbf{s}_b) - l_b`)."""
    B, N = score.shape
    norm = torch.zeros(B, dtype=score.dtype, device=score.device).index_add_(
        0, row, value)  # |y_b|
    coef = (1.0 - eps) * (norm > 0).to(score.dtype) + eps
    weight = (1.0 - eps) / norm.clamp_min(torch.finfo(score.dtype).tiny)
    picked = torch.zeros_like(norm).index_add_(0, row, score[row, col] * value)
    return coef, weight, picked * weight + (eps / N) * score.sum(dim=1)


def _ce_loss_and_grad_(score: Tensor, row: Tensor, col: Tensor, value: Tensor,
                       eps: float) -> Tuple[Tensor, Tensor]:
    r"""The ``"ce"`` loss and :math:`\partial \ell / \partial \mathbf{S}`, written over
    ``score``, in one exponential pass: ``score`` becomes :math:`e^{s_{bt} - m_b}` (row
    maxima :math:`m_b`), whose row sums :math:`z_b` give :math:`\operatorname{logsumexp} =
    m_b + \log z_b` and whose scaling by :math:`c_b / (B z_b)` is :math:`c_b
    \mathrm{softmax}(\mathbf{s}_b) / B`. No other ``[B, N]`` tensor is allocated."""
    B, N = score.shape
    coef, weight, linear = _ce_terms(score, row, col, value, eps)
    top = score.amax(dim=1, keepdim=True)
    # arguments x below log(B tiny) are raised to it first: their gradient c_b e^x / (B z_b)
    # is below tiny anyway (z_b >= 1 >= c_b) and the flush zeroes it, z_b moves by less than
    # N B tiny (below float32's resolution at z_b >= 1), and exp never makes or reads a
    # subnormal (its slow path)
    floor = math.log(B * torch.finfo(score.dtype).tiny)
    z = score.sub_(top).clamp_min_(floor).exp_().sum(dim=1)
    loss = (coef * (top.squeeze(1) + z.log()) - linear).mean()
    grad = flush_subnormal_(score.mul_((coef / (B * z)).unsqueeze(1)))
    return loss, _answer_terms_(grad, row, col, value, "ce", eps, weight)


def _loss_grad(score: Tensor, row: Tensor, col: Tensor, value: Tensor, kind: str, eps: float,
               aux: Tuple[Tensor, ...], inplace: bool = False) -> Tensor:
    r""":math:`\partial \ell / \partial \mathbf{S}` ``[B, N]``, written over ``score`` if
    ``inplace`` (the only ``[B, N]`` buffer of the backward pass)."""
    B, N = score.shape
    grad = score if inplace else score.clone()
    if kind == "ce":
        lse, coef, weight = aux
        # c_b softmax(s_b) / B = exp(s_b - lse_b + log(c_b / B)): two passes over [B, N]
        flush_subnormal_(grad.sub_((lse - torch.log(coef / B)).unsqueeze(1)).exp_())
        return _answer_terms_(grad, row, col, value, kind, eps, weight)
    grad.sigmoid_().sub_(1.0 / N).mul_(1.0 / (B * N))
    return _answer_terms_(grad, row, col, value, kind, eps)


def _answer_terms_(grad: Tensor, row: Tensor, col: Tensor, value: Tensor, kind: str,
                   eps: float, weight: Optional[Tensor] = None) -> Tensor:
    r"""Subtracts the target :math:`\tilde{\mathbf{y}}` (scaled as the loss is) from the
    softmax / sigmoid part of the gradient, in place."""
    B, N = grad.shape
    if kind == "ce":
        if eps > 0:
            grad.sub_(eps / (N * B))
        return grad.index_put_((row, col), -(weight[row] * value) / B, accumulate=True)
    return grad.index_put_((row, col), -(1.0 - eps) * value / (B * N), accumulate=True)


class _OneToNLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, score: Tensor, row: Tensor, col: Tensor, value: Tensor, kind: str,
                eps: float) -> Tensor:
        value = value.to(score.dtype)
        loss, aux = _loss_value(score, row, col, value, kind, eps)
        ctx.save_for_backward(score, row, col, value, *aux)
        ctx.kind, ctx.eps = kind, eps
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        score, row, col, value, *aux = ctx.saved_tensors
        grad = _loss_grad(score, row, col, value, ctx.kind, ctx.eps, tuple(aux))
        return grad.mul_(grad_out), None, None, None, None, None


class _LinearOneToNLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, query: Tensor, cand: Tensor, row: Tensor, col: Tensor,
                value: Tensor, kind: str, eps: float, out: Optional[Tensor]) -> Tensor:
        # (the product runs in the autocast dtype under autocast, as unfused)
        s, mm_dtype = product_into(query, cand.t(), out)
        q_mm, c_mm = query.to(mm_dtype), cand.to(mm_dtype)
        value = value.to(s.dtype)
        if kind == "ce":
            loss, grad = _ce_loss_and_grad_(s, row, col, value, eps)
        else:
            loss, aux = _loss_value(s, row, col, value, kind, eps)
            grad = _loss_grad(s, row, col, value, kind, eps, aux, inplace=True)
        grad = grad.to(q_mm.dtype)
        # the backward's products, done now, so that no [B, N] tensor outlives forward
        # (G^T Q with G^T a transposed view: on the 2-core AVX-512 benchmark machine 48 ms
        # at B = 1024, N = 15000, d = 300, against 52 + 4 ms for (Q^T G)^T and its copy)
        ctx.save_for_backward((grad @ c_mm).to(query.dtype),
                              (grad.t() @ q_mm).to(cand.dtype))
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        # scaled in place: a second backward through this node (retain_graph) raises
        # autograd's "modified by an inplace operation" error instead of reusing them, and
        # no fresh [N, d] tensor is faulted in per modality and step
        grad_query, grad_cand = ctx.saved_tensors
        return (grad_query.mul_(grad_out), grad_cand.mul_(grad_out), None, None, None, None,
                None, None)


def one_to_n_loss(score: Tensor, target: Tensor, loss: str = "ce",
                  label_smoothing: float = 0.0) -> Tensor:
    r"""The 1-N loss of ``score`` ``[B, N]`` (float logits) against a multi-hot ``target``
    ``[B, N]`` (dense, or sparse COO/CSR: only its non-zeros are read), see the module doc.

    Args:
        score (Tensor): ``[B, N]`` logits.
        target (Tensor): ``[B, N]`` non-negative answer weights (1 = answer).
        loss (str): ``"ce"`` or ``"bce"``.
        label_smoothing (float): :math:`\varepsilon \in [0, 1)`.
    """
    _check(loss, label_smoothing)
    if score.dim() != 2 or tuple(target.shape) != tuple(score.shape):
        raise ValueError(f"target must have the scores' shape {tuple(score.shape)}, got "
                         f"{tuple(target.shape)}")
    row, col, value = sparse_rows(target.to(score.device))
    return _OneToNLoss.apply(score, row, col, value, loss, float(label_smoothing))


def linear_one_to_n_loss(query: Tensor, cand: Tensor, target: Tensor, loss: str = "ce",
                         label_smoothing: float = 0.0, out: Optional[Tensor] = None) -> Tensor:
    r"""``one_to_n_loss(query @ cand.t(), target, ...)`` with the same value and gradients,
    without a ``[B, N]`` tensor outliving the call: the forward pass computes the scores,
    the loss, :math:`\mathbf{G} = \partial\ell/\partial\mathbf{S}` in the same buffer, and
    the two gradient products :math:`\mathbf{G}\mathbf{C}` and
    :math:`\mathbf{G}^\top\mathbf{Q}` at once (the FLOPs of the unfused backward, done
    early), keeping only those ``[B, d]`` and ``[N, d]`` results for backward. For training
    steps (the gradient is computed even if backward is never called). The backward pass
    scales those results in place, so it runs once per call: a second backward through a
    retained graph raises autograd's in-place modification error (use
    :func:`one_to_n_loss` on the product for that).

    Args:
        query (Tensor): ``[B, d]`` queries :math:`\mathbf{Q}`.
        cand (Tensor): ``[N, d]`` candidate embeddings :math:`\mathbf{C}`.
        target, loss, label_smoothing: As in :func:`one_to_n_loss`.
        out (Tensor, optional): A float32 ``[B, N]`` scratch buffer for the scores and their
            gradient (overwritten; its contents mean nothing afterwards). Several losses of
            one step can share one buffer: each is done with it when it returns.
    """
    _check(loss, label_smoothing)
    shape = (query.size(0), cand.size(0))
    if query.dim() != 2 or cand.dim() != 2 or query.size(1) != cand.size(1):
        raise ValueError(f"need query [B, d] and cand [N, d], got {tuple(query.shape)} and "
                         f"{tuple(cand.shape)}")
    if tuple(target.shape) != shape:
        raise ValueError(f"target must have shape {shape}, got {tuple(target.shape)}")
    check_out_buffer(out, shape, query.device)
    row, col, value = sparse_rows(target.to(query.device))
    return _LinearOneToNLoss.apply(query, cand, row, col, value, loss, float(label_smoothing),
                                   out)


def product_into(a: Tensor, b: Tensor, out: Optional[Tensor]) -> Tuple[Tensor, torch.dtype]:
    r"""``(a @ b as float32, the dtype the product ran in)``, written into :obj:`out` when
    given: by ``torch.mm(out=)`` where that computes what ``a @ b`` would (same dtypes, no
    autocast, no gradient wanted), otherwise computed and copied in."""
    direct = (out is not None and a.dtype == b.dtype == out.dtype
              and not torch.is_autocast_enabled(a.device.type)
              and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)))
    if direct:
        return torch.mm(a, b, out=out), out.dtype
    s = a @ b
    return (s.float() if out is None else out.copy_(s)), s.dtype


def check_out_buffer(out: Optional[Tensor], shape: Tuple[int, int],
                     device: torch.device) -> None:
    r"""Raises unless :obj:`out` is :obj:`None` or a float32 tensor of :obj:`shape` on
    :obj:`device` (the ``out=`` scores buffers of the loss and of evaluation)."""
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != torch.float32
                            or out.device != device):
        raise ValueError(f"out must be a float32 tensor of shape {tuple(shape)} on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")


def _check(loss: str, label_smoothing: float) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


__all__ = ["LOSSES", "linear_one_to_n_loss", "one_to_n_loss", "sparse_rows"]
