r"""Multi-modal joint decision, MuJoD (paper Eq. 3-6)."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import ModuleDict, Parameter, ParameterDict

from .kernels.fusion import attention_fusion, head_dropout_seed
from .kernels.tucker_dropout import keep_probability, keep_threshold
from .loss import LOSSES, check_out_buffer, linear_one_to_n_loss, one_to_n_loss, product_into
from .tucker import TuckerScorer

JOINT = "joint"
FUSIONS = ("attention", "mean")
AGGREGATES = ("sum", "mean_sigmoid")


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
        return attention_fusion(threshold, scale, self.attn, *flat)

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
                     candidates: Mapping[str, Tensor], target: Tensor,
                     logit_shift: Optional[Tensor] = None
                     ) -> Tuple[Tensor, Optional[Tensor]]:
        r"""``(loss(forward(heads, rel, candidates)[0], target), weights)`` with the same
        value and gradients, but no ``[B, N]`` score tensor kept for backward (each
        modality's scores, loss and score gradient live only inside
        :func:`~momok_pyg.nn.loss.linear_one_to_n_loss`). The training step's path.
        ``logit_shift`` ``[N]`` (optional) is added to every modality's logits, as one more
        column of the product (a constant 1 in the queries, the shift in the candidates)."""
        q, weights = self.queries(heads, rel)
        if logit_shift is not None:
            ones = next(iter(q.values())).new_ones(next(iter(q.values())).size(0), 1)
            shift = logit_shift.to(ones.dtype).unsqueeze(1)
            q = {m: torch.cat([v, ones.to(v.dtype)], 1) for m, v in q.items()}
            candidates = {m: torch.cat([c, shift.to(c.dtype)], 1)
                          for m, c in candidates.items()}
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
                          out: Optional[Tensor] = None,
                          candidate_slice: Optional[slice] = None) -> Tensor:
        r"""The joint decision ``[B, N]`` straight from queries and candidates. For
        ``aggregate="sum"``, :math:`\sum_m \mathbf{q}_m \mathbf{E}_m^\top` is one matmul of
        the concatenated queries and candidates (same FLOPs, no per-modality ``[B, N]``
        tensors). ``concat`` is an optional memo of concatenated candidate tables, keyed by
        the modality tuple. ``out`` is an optional float32 ``[B, N]`` tensor to write the
        decision into (and return): an evaluation loop reusing one buffer saves a fresh
        ``[B, N]`` allocation, i.e. its page faults, per batch. ``candidate_slice`` scores only
        the candidates of that slice (``[B, c1 - c0]``, views of the tables, no copy)."""
        modalities = self.check_modalities(modalities)
        first = q[modalities[0]]
        sl = candidate_slice if candidate_slice is not None else slice(None)
        rows = candidates[modalities[0]][sl].size(0)
        check_out_buffer(out, (first.size(0), rows), first.device)
        if self.aggregate_type == "sum":
            qs = torch.cat([q[m] for m in modalities], dim=1)
            key = tuple(modalities)
            cs = None if concat is None else concat.get(key)
            if cs is None:
                cs = torch.cat([candidates[m] for m in modalities], dim=1)
                if concat is not None:
                    concat[key] = cs
            return product_into(qs, cs[sl].t(), out)[0]
        scores = self.aggregate({m: q[m] @ candidates[m][sl].t() for m in modalities},
                                modalities)
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
