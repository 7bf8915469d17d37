r"""Tucker scoring (paper Eq. 4) with relation-grouped core contraction."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import BatchNorm1d, Embedding, Parameter

from momok_pyg.nn.kernels.grad_buffers import gradient_buffer
from momok_pyg.nn.kernels.grouped import group_by_relation, relation_grouped_matmul
from momok_pyg.nn.kernels.tucker_dropout import (
    dropout,
    gradient_noise_matmul,
    per_sample_dropout_matmul,
)

__all__ = ["TuckerScorer", "HIDDEN_DROPOUT_MODES", "group_by_relation",
           "relation_grouped_matmul"]

HIDDEN_DROPOUT_MODES = ("sample", "moments", "gaussian", "relation")


class _CoreContraction(torch.autograd.Function):
    r""":math:`[\mathbf{W}_{r_1}; \dots] = \mathbf{R} \mathcal{W}_{(1)}`, ``[U, d_r] x
    [d_r, d_e, d_e] -> [U, d_e, d_e]``, whose core gradient goes into a
    :func:`~momok_pyg.nn.kernels.grad_buffers.gradient_buffer`."""

    @staticmethod
    def forward(ctx, rel: Tensor, core: Tensor) -> Tensor:
        ctx.save_for_backward(rel, core)
        r, e, f = core.shape
        return (rel @ core.view(r, e * f)).view(-1, e, f)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        rel, core = ctx.saved_tensors
        r = core.size(0)
        grad = grad.reshape(grad.size(0), -1).to(core.dtype)
        grad_rel = grad_core = None
        if ctx.needs_input_grad[0]:
            grad_rel = grad @ core.view(r, -1).t()
        if ctx.needs_input_grad[1]:
            grad_core = gradient_buffer(core.shape, core.dtype, core.device)
            torch.mm(rel.t(), grad, out=grad_core.view(r, -1))
        return grad_rel, grad_core


class TuckerScorer(torch.nn.Module):
    r"""The per-modality Tucker score function of MoMoK (paper Eq. 4), in 1-N form.

    With a core tensor :math:`\mathcal{W} \in \mathbb{R}^{d_r \times d_e \times d_e}`, a head
    embedding :math:`\mathbf{e}_h \in \mathbb{R}^{d_e}` and a relation embedding
    :math:`\mathbf{r} \in \mathbb{R}^{d_r}`, the score of a candidate tail :math:`t` is

    .. math::
        \phi(h, r, t) = \mathcal{W} \times_1 \mathbf{r} \times_2 \mathbf{e}_h
        \times_3 \mathbf{e}_t = \mathbf{q}^\top \mathbf{e}_t, \qquad
        \mathbf{q} = \mathbf{e}_h^\top \mathbf{W}_r, \quad
        \mathbf{W}_r = \textstyle\sum_i r_i \mathcal{W}_{i,:,:} \in
        \mathbb{R}^{d_e \times d_e},

    and all :math:`N` candidates are scored at once: :math:`\mathbf{S} = \mathbf{Q}
    \mathbf{E}^\top \in \mathbb{R}^{B \times N}`.
    As in the official ``TuckERLayer``, :math:`\mathbf{e}_h` passes BatchNorm + input dropout,
    :math:`\mathbf{W}_r` hidden dropout and :math:`\mathbf{q}` BatchNorm + output dropout
    (TuckER, Balažević et al., 2019). The relation table has one row per relation including
    the reciprocal ones (id :math:`r + R` is the inverse of :math:`r`), i.e. ``2R`` rows.

    **Cost.** :math:`\mathbf{W}_r` is contracted once per *distinct* relation of the batch
    (:math:`U \le 2R` of them, :math:`U d_r d_e^2` MACs) and each relation's heads are
    multiplied by it as a group (:func:`relation_grouped_matmul`, :math:`B d_e^2` MACs);
    no ``[B, d_e, d_e]`` tensor is ever built.

    **Hidden dropout.** The official code drops entries of every *sample's* own copy of
    :math:`\mathbf{W}_r` (rate :math:`p`): :math:`\mathbf{q}_b = \mathbf{x}_b
    (\mathbf{W}_r \odot \mathbf{M}_b) / (1-p)`. ``hidden_dropout_mode`` chooses how:

    * ``"sample"`` (default): exactly that, one fresh mask per sample
      (:func:`~momok_pyg.nn.kernels.tucker_dropout.per_sample_dropout_matmul`). The masks are
      counter-based (a hash of a per-step seed and the entry's position), so three fused
      :func:`torch.compile` kernels (forward, two gradients) recompute them in registers: no
      ``[B, d_e, d_e]`` tensor, float or boolean, is built or kept. Without a compiler the same
      masks are drawn eagerly and kept as booleans. ``benchmarks/bench_momok.py`` measures
      that it learns like the naive reference.
    * ``"gaussian"`` (opt-in, faster): the moment-matched Gaussian of that noise ("fast
      dropout", Wang & Manning, 2013). Given :math:`\mathbf{x}_b` and :math:`\mathbf{W}_r`,
      the entries of :math:`\mathbf{q}_b` are independent with mean
      :math:`(\mathbf{x}_b \mathbf{W}_r)_j` and variance
      :math:`\frac{p}{1-p} \sum_i x_{bi}^2 W_{r,ij}^2`; they are drawn as

      .. math::
          \mathbf{q}_b = \mathbf{x}_b \mathbf{W}_r + \boldsymbol{\xi}_b \odot
          \sqrt{\tfrac{p}{1-p}\, (\mathbf{x}_b \odot \mathbf{x}_b)
          (\mathbf{W}_r \odot \mathbf{W}_r)}, \qquad \boldsymbol{\xi}_b \sim
          \mathcal{N}(\mathbf{0}, \mathbf{I}),

      one more relation-grouped product and :math:`B d_e` normal draws. Same first two
      moments as the official masks, but its gradients are less noisy (the local
      reparameterisation of Kingma et al., 2015): the benchmark measures that it learns
      *faster* than the official model in the first epochs (its gradients miss the masks'
      noise, which ``"moments"`` adds back).
    * ``"moments"`` (opt-in, faster): the ``"gaussian"`` forward, and a backward pass that adds
      to the gradients of :math:`\mathbf{x}_b` and :math:`\mathbf{W}_r` independent Gaussian
      noise of the per-entry variance the official masks give them
      (:func:`~momok_pyg.nn.kernels.tucker_dropout.gradient_noise_matmul`; two more grouped products
      in backward). First and second moments of activations and gradients both match the
      official masks (tested), and it runs at the speed of the grouped products; it passes
      ``benchmarks/bench_momok.py``'s 5-epoch equal-learning check, but over longer runs it
      learns slightly *slower* than the official masks on every seed measured
      (``benchmarks/dropout_modes.py``: MKG-Y, d = 64, 25 epochs, test MRR 0.292 vs 0.302;
      synthetic, 48 epochs, 0.312 vs 0.315): its gradient noise is independent of the
      forward noise, where one mask drives both. Opt-in where speed matters more.
    * ``"relation"``: one mask per distinct relation of the batch, shared by its samples
      (cheap, but the correlated noise learns measurably worse; kept for comparison).

    Args:
        num_relations (int): Rows of the relation table (``2R`` with reciprocals).
        ent_dim (int): Entity embedding size :math:`d_e`.
        rel_dim (int): Relation embedding size :math:`d_r`.
        input_dropout, hidden_dropout, output_dropout (float): Dropout rates on
            :math:`\mathbf{e}_h`, :math:`\mathbf{W}_r`, :math:`\mathbf{q}` (official: 0.3, 0.4,
            0.5).
        batch_norm (bool): BatchNorm on :math:`\mathbf{e}_h` and :math:`\mathbf{q}`.
        rel_embedding (bool): If :obj:`False` the scorer owns no relation table and
            :meth:`forward` needs ``rel_table`` (MoMoK's joint modality fuses its table from
            the other modalities).
        grouped (str): ``"loop"`` or ``"padded"``, see :func:`relation_grouped_matmul`.
        hidden_dropout_mode (str): ``"sample"``, ``"gaussian"``, ``"moments"`` or
            ``"relation"`` (above).
    """
    def __init__(self, num_relations: int, ent_dim: int, rel_dim: int,
                 input_dropout: float = 0.3, hidden_dropout: float = 0.4,
                 output_dropout: float = 0.5, batch_norm: bool = True,
                 rel_embedding: bool = True, grouped: str = "loop",
                 hidden_dropout_mode: str = "sample"):
        super().__init__()
        if grouped not in ("loop", "padded"):
            raise ValueError(f"grouped must be 'loop' or 'padded', got {grouped!r}")
        if hidden_dropout_mode not in HIDDEN_DROPOUT_MODES:
            raise ValueError(f"hidden_dropout_mode must be one of {HIDDEN_DROPOUT_MODES}, "
                             f"got {hidden_dropout_mode!r}")
        self.num_relations = num_relations
        self.ent_dim = ent_dim
        self.rel_dim = rel_dim
        self.input_dropout = input_dropout
        self.hidden_dropout = hidden_dropout
        self.output_dropout = output_dropout
        self.grouped = grouped
        self.hidden_dropout_mode = hidden_dropout_mode
        self.core = Parameter(torch.empty(rel_dim, ent_dim, ent_dim))
        self.rel_emb = Embedding(num_relations, rel_dim) if rel_embedding else None
        self.bn0 = BatchNorm1d(ent_dim) if batch_norm else None
        self.bn1 = BatchNorm1d(ent_dim) if batch_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.core)  # as the official TuckERLayer
        if self.rel_emb is not None:
            torch.nn.init.xavier_normal_(self.rel_emb.weight)
        for bn in (self.bn0, self.bn1):
            if bn is not None:
                bn.reset_parameters()
                bn.reset_running_stats()

    def relation_matrices(self, rel_emb: Tensor) -> Tensor:
        r"""Contracts the core with relation embeddings: ``[U, d_r] -> [U, d_e, d_e]``
        (:math:`\mathbf{W}_r = \mathcal{W} \times_1 \mathbf{r}`), in the core's dtype also
        under autocast.

        The product is :math:`U d_r d_e^2` MACs over a core of :math:`d_r d_e^2` entries
        with :math:`U \le 2R`: it streams the core once and is memory-bound. Under bf16
        autocast, casting the core (and its gradient back) would cost more than the
        product saves, and the per-sample dropout kernels compute in float32 anyway.
        The core's gradient :math:`\mathbf{R}^\top \partial L / \partial \mathbf{W}` is
        written into a reused buffer (:mod:`momok_pyg.nn.kernels.grad_buffers`) when the optimizer
        gives it back (:class:`~momok_pyg.training.BackwardAdam` does)."""
        with torch.autocast(rel_emb.device.type, enabled=False):
            return _CoreContraction.apply(rel_emb.to(self.core.dtype), self.core)

    def query(self, head: Tensor, rel: Tensor, rel_table: Optional[Tensor] = None,
              all_matrices: Optional[Tensor] = None) -> Tensor:
        r"""The query :math:`\mathbf{q} = \mathbf{e}_h^\top \mathbf{W}_r`, ``[B, d_e]``.

        Args:
            head (Tensor): ``[B, d_e]`` head embeddings.
            rel (Tensor): ``[B]`` relation ids in ``[0, num_relations)``.
            rel_table (Tensor, optional): ``[num_relations, d_r]`` relation embeddings
                (defaults to the scorer's own table).
            all_matrices (Tensor, optional): precomputed :meth:`relation_matrices` of
                *all* relations, ``[num_relations, d_e, d_e]`` (evaluation passes reuse
                them across batches instead of contracting the core every batch).
        """
        if all_matrices is None and rel_table is None:
            if self.rel_emb is None:
                raise ValueError("this TuckerScorer has no relation table; pass rel_table")
            rel_table = self.rel_emb.weight
        x = self.bn0(head) if self.bn0 is not None else head
        x = dropout(x, self.input_dropout, self.training)
        if all_matrices is not None and self.grouped == "loop" and not self._hidden_active():
            # The cached table is used in place (no [U, d_e, d_e] copy of it per batch).
            q = relation_grouped_matmul(x, rel, all_matrices)
        else:
            unique, group, perm, counts = group_by_relation(rel)
            if all_matrices is not None:
                mats = all_matrices.index_select(0, unique)
            else:
                mats = self.relation_matrices(rel_table.index_select(0, unique))
            q = self._hidden(x, group, mats, (perm, counts))
        q = self.bn1(q) if self.bn1 is not None else q
        return dropout(q, self.output_dropout, self.training)

    def _hidden_active(self) -> bool:
        return self.training and self.hidden_dropout > 0.0

    def _hidden(self, x: Tensor, group: Tensor, mats: Tensor,
                grouping: Tuple[Tensor, Tensor]) -> Tensor:
        r""":math:`\mathbf{x}_b \mathbf{W}_{g(b)}` with hidden dropout (see class doc)."""
        p = self.hidden_dropout
        if not self._hidden_active():
            return relation_grouped_matmul(x, group, mats, self.grouped, grouping)
        if self.hidden_dropout_mode == "sample":
            return per_sample_dropout_matmul(x, group, mats, p, grouping=grouping)
        if self.hidden_dropout_mode == "relation":  # p = 1: all-zero matrices, as F.dropout
            dropped = mats * 0.0 if p >= 1.0 else dropout(mats, p)
            return relation_grouped_matmul(x, group, dropped, self.grouped, grouping)
        if p >= 1.0:
            return x.new_zeros(x.size(0), mats.size(-1))
        if self.hidden_dropout_mode == "moments":
            mean = gradient_noise_matmul(x, group, mats, p, grouping, self.grouped)
        else:
            mean = relation_grouped_matmul(x, group, mats, self.grouped, grouping)
        var = relation_grouped_matmul(x * x, group, mats * mats, self.grouped, grouping)
        std = torch.sqrt(var.float().clamp_min(1e-12) * (p / (1.0 - p))).to(mean.dtype)
        return mean + torch.randn_like(mean) * std

    def forward(self, head: Tensor, rel: Tensor, candidates: Tensor,
                rel_table: Optional[Tensor] = None) -> Tensor:
        r"""1-N scores ``[B, N]`` of every candidate tail (rows of ``candidates``,
        ``[N, d_e]``) for the queries ``(head, rel, ?)``."""
        return self.query(head, rel, rel_table) @ candidates.t()

    def extra_repr(self) -> str:
        return (f"{self.num_relations}, ent_dim={self.ent_dim}, "
                f"rel_dim={self.rel_dim}, hidden_dropout_mode={self.hidden_dropout_mode!r}")
