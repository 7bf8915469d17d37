r"""PyG's knowledge-graph embedding models (:mod:`torch_geometric.nn.kge`) as 1-N scorers, so
that they train with :func:`momok_pyg.training.train` and are ranked by
:func:`momok_pyg.evaluate.evaluate_link_prediction` exactly like MoMoK and TuckER -- the
uni-modal baselines of the paper's Table 1 (TransE, DistMult, ComplEx, RotatE).

A query ``(e, r, ?)`` with :math:`r \in [0, 2R)` asks, as everywhere in momok_pyg, for the
tails of :math:`(e, r, ?)` when :math:`r < R` and for the heads of :math:`(?, r - R, e)`
otherwise. The wrapped model keeps its own triple score :math:`\phi(h, r, t)` over the
:math:`R` original relations (no reciprocal relations are added):

.. math::
    s_{(e, r), x} =
    \begin{cases} \phi(e, r, x) & r < R \\ \phi(x, r - R, e) & r \geq R \end{cases}
    \qquad x = 1, \dots, N.

For the four models above the :math:`N` scores of a query come in closed form from one
matrix product or one distance computation against the entity table (e.g. TransE:
:math:`-\lVert \bar{\mathbf{e}}_h + \mathbf{r} - \bar{\mathbf{e}}_x \rVert_p =
-\operatorname{cdist}_p(\bar{\mathbf{e}}_h + \mathbf{r}, \bar{\mathbf{E}})`; RotatE's head
direction uses :math:`\lVert \mathbf{h} \circ \mathbf{r} - \mathbf{t} \rVert =
\lVert \mathbf{h} - \mathbf{t} \circ \bar{\mathbf{r}} \rVert` for unit-modulus
:math:`\mathbf{r}`); any other :class:`~torch_geometric.nn.kge.KGEModel` is scored through its
own ``forward`` on every (query, candidate) pair, in chunks. Training is 1-N ("1vsAll"): the
loss of :func:`~momok_pyg.nn.one_to_n_loss` (softmax cross-entropy or BCE) of these scores,
in both directions, instead of PyG's negative-sampling ``loss()``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.kge import ComplEx, DistMult, KGEModel, RotatE, TransE

from ..datasets.schema import STRUCTURE
from .loss import check_out_buffer, one_to_n_loss
from .momok import MoMoKLoss

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

#: ``TrainConfig.model`` / ``--model`` names of the PyG KGE models
KGE_MODELS: Dict[str, Type[KGEModel]] = {"transe": TransE, "distmult": DistMult,
                                         "complex": ComplEx, "rotate": RotatE}


class KGEScorer(torch.nn.Module):
    r"""Wraps a :class:`torch_geometric.nn.kge.KGEModel` for 1-N training and evaluation in
    both directions (see the module docstring).

    Args:
        kge (KGEModel): The PyG model, built for ``num_relations = R`` original relations.
        loss (str): ``"ce"`` (softmax cross-entropy over all entities) or ``"bce"``.
        label_smoothing (float, optional): As :func:`~momok_pyg.nn.one_to_n_loss`.
        chunk_size (int): Candidates per ``forward`` call of the generic path (models other
            than TransE, DistMult, ComplEx and RotatE).
    """
    score_modalities: List[str] = [STRUCTURE]

    def __init__(self, kge: KGEModel, loss: str = "ce", label_smoothing: Optional[float] = None,
                 chunk_size: int = 1 << 20):
        super().__init__()
        if not isinstance(kge, KGEModel):
            raise TypeError(f"kge must be a torch_geometric.nn.kge.KGEModel, got "
                            f"{type(kge).__name__}")
        self.kge = kge
        self.loss_kind = loss
        self.label_smoothing = float(label_smoothing or 0.0)
        self.chunk_size = int(chunk_size)
        self.num_entities = int(kge.num_nodes)
        self.num_relations = int(kge.num_relations)
        self._closed_form: Optional[Callable[[Tensor, Tensor, bool, slice], Tensor]] = {
            TransE: self._transe, DistMult: self._distmult, ComplEx: self._complex,
            RotatE: self._rotate}.get(type(kge))

    @classmethod
    def from_data(cls, data: HeteroData, model: str = "transe", dim: int = 200, loss: str = "ce",
                  label_smoothing: Optional[float] = None, **kge_kwargs: Any) -> "KGEScorer":
        r"""The PyG model :obj:`model` (a key of :data:`KGE_MODELS`) with ``hidden_channels =
        dim`` for an MMKG (its feature modalities are ignored); :obj:`kge_kwargs` go to the
        model's constructor (e.g. ``margin``, ``p_norm``)."""
        if model not in KGE_MODELS:
            raise ValueError(f"unknown KGE model {model!r}; expected one of "
                             f"{sorted(KGE_MODELS)}")
        kge = KGE_MODELS[model](num_nodes=int(data["entity"].num_nodes),
                                num_relations=int(data.num_relations), hidden_channels=dim,
                                **kge_kwargs)
        return cls(kge, loss=loss, label_smoothing=label_smoothing)

    def reset_parameters(self) -> None:
        self.kge.reset_parameters()

    # -- scoring -------------------------------------------------------------------------
    def forward(self, ent: Tensor, rel: Tensor,
                candidates: Optional[Union[slice, Tensor]] = None) -> Tensor:
        r"""Scores ``[B, N]`` of all candidates for the queries ``(ent, rel, ?)``,
        :math:`rel \in [0, 2R)`; with a :obj:`candidates` slice only those (``[B, c1 - c0]``,
        computed from the slice of the entity table alone)."""
        cand = candidates if candidates is not None else slice(None)
        R = self.num_relations
        if rel.numel() and (int(rel.min()) < 0 or int(rel.max()) >= 2 * R):
            raise ValueError(f"query relations must lie in [0, {2 * R}) (R = {R} relations "
                             f"and their inverses), got [{int(rel.min())}, {int(rel.max())}]")
        fn = self._closed_form or self._generic
        tail = rel < R
        parts = []
        for mask, is_tail in ((tail, True), (~tail, False)):
            idx = mask.nonzero().view(-1)
            if idx.numel():
                r = rel[idx] if is_tail else rel[idx] - R
                parts.append((idx, fn(ent[idx], r, is_tail, cand).float()))
        if len(parts) == 1:
            return parts[0][1]
        width = (cand.numel() if isinstance(cand, Tensor)
                 else len(range(self.num_entities)[cand]))
        out = ent.new_zeros((ent.numel(), width), dtype=torch.float32)
        for idx, scores in parts:  # out of place: differentiable in the scores
            out = out.index_put((idx, ), scores)
        return out

    def _generic(self, ent: Tensor, r: Tensor, is_tail: bool, sl: slice) -> Tensor:
        cand = torch.arange(self.num_entities, device=ent.device)[sl]
        B, N = ent.numel(), cand.numel()
        rows = max(1, self.chunk_size // max(N, 1))
        parts = []
        for e, rr in zip(ent.split(rows), r.split(rows)):
            q = e.repeat_interleave(N)
            x = cand.repeat(e.numel())
            rq = rr.repeat_interleave(N)
            s = self.kge(q, rq, x) if is_tail else self.kge(x, rq, q)
            parts.append(s.view(e.numel(), N))
        return torch.cat(parts) if parts else ent.new_zeros((B, N), dtype=torch.float32)

    def _transe(self, ent: Tensor, r: Tensor, is_tail: bool, sl: slice) -> Tensor:
        kge, p = self.kge, self.kge.p_norm
        e = F.normalize(kge.node_emb(ent), p=p, dim=-1)
        q = e + kge.rel_emb(r) if is_tail else e - kge.rel_emb(r)
        return -torch.cdist(q, F.normalize(kge.node_emb.weight[sl], p=p, dim=-1), p=p)

    def _distmult(self, ent: Tensor, r: Tensor, is_tail: bool, sl: slice) -> Tensor:
        kge = self.kge
        return (kge.node_emb(ent) * kge.rel_emb(r)) @ kge.node_emb.weight[sl].t()

    def _complex(self, ent: Tensor, r: Tensor, is_tail: bool, sl: slice) -> Tensor:
        kge = self.kge
        e_re, e_im = kge.node_emb(ent), kge.node_emb_im(ent)
        r_re, r_im = kge.rel_emb(r), kge.rel_emb_im(r)
        if is_tail:  # coefficients of t_re and t_im in phi(e, r, t)
            a, b = e_re * r_re - e_im * r_im, e_im * r_re + e_re * r_im
        else:  # coefficients of h_re and h_im in phi(h, r, e)
            a, b = r_re * e_re + r_im * e_im, r_re * e_im - r_im * e_re
        return a @ kge.node_emb.weight[sl].t() + b @ kge.node_emb_im.weight[sl].t()

    def _rotate(self, ent: Tensor, r: Tensor, is_tail: bool, sl: slice) -> Tensor:
        kge = self.kge
        e_re, e_im = kge.node_emb(ent), kge.node_emb_im(ent)
        theta = kge.rel_emb(r)
        c, s = torch.cos(theta), torch.sin(theta)
        if is_tail:  # h o r
            q_re, q_im = c * e_re - s * e_im, c * e_im + s * e_re
        else:  # t o conj(r): |h o r - t| = |h - t o conj(r)|
            q_re, q_im = c * e_re + s * e_im, c * e_im - s * e_re
        table = torch.cat([kge.node_emb.weight[sl], kge.node_emb_im.weight[sl]], dim=-1)
        return kge.margin - torch.cdist(torch.cat([q_re, q_im], dim=-1), table)

    # -- the training loop's interface -----------------------------------------------------
    def forward_loss(self, ent: Tensor, rel: Tensor, target: Tensor) -> MoMoKLoss:
        r"""The 1-N loss of the queries against the multi-hot ``target`` ``[B, N]``."""
        loss = one_to_n_loss(self(ent, rel), target, self.loss_kind, self.label_smoothing)
        return MoMoKLoss(loss, {}, {}, None)

    def forward_loss_sampled(self, ent: Tensor, rel: Tensor, target: Tensor,
                             candidates: Tensor, logit_shift: Optional[Tensor] = None
                             ) -> MoMoKLoss:
        r"""The loss against the candidate subset :obj:`candidates` ``[C]`` (target
        ``[B, C]``, optional per-candidate ``logit_shift``), see
        :func:`momok_pyg.training.batching.sample_candidates`."""
        scores = self(ent, rel, candidates)
        if logit_shift is not None:
            scores = scores + logit_shift.to(scores)
        loss = one_to_n_loss(scores, target, self.loss_kind, self.label_smoothing)
        return MoMoKLoss(loss, {}, {}, None)

    @torch.no_grad()
    def predict(self, head: Tensor, rel: Tensor, modalities: Optional[List[str]] = None,
                out: Optional[Tensor] = None, candidates: Optional[slice] = None) -> Tensor:
        r"""Eval-mode scores ``[B, N]`` (written into ``out`` when given; ``[B, c1 - c0]``
        for a :obj:`candidates` slice)."""
        if modalities is not None and list(modalities) != [STRUCTURE]:
            raise ValueError(f"{type(self.kge).__name__} scores the structure modality "
                             f"only; got modalities {list(modalities)}")
        was_training = self.training
        self.eval()
        try:
            scores = self(head, rel, candidates)
        finally:
            self.train(was_training)
        if out is None:
            return scores
        check_out_buffer(out, tuple(scores.shape), scores.device)
        return out.copy_(scores)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.kge}, loss={self.loss_kind!r}, "
                f"label_smoothing={self.label_smoothing})")
