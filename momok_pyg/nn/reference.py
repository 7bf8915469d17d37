r"""The reference formulation of MoMoK: the paper's equations written down literally, eager,
with none of the fast paths of :mod:`momok_pyg.nn.kernels`.

Read it beside the paper to check an equation; the tests compare the fast model against it
on a small graph (scores, filtered ranks, the loss and every parameter's gradient:
``tests/test_bench.py``), and ``benchmarks/bench_momok.py`` times the two side by side.

:class:`NaiveMoMoK` reads the parameters of an existing :class:`momok_pyg.nn.MoMoK`
(it shares them: the naive model holds the MoMoK instance as a submodule and only reads its
parameter tensors, it never calls a MoMoK module's ``forward``), so both score with the same
weights. In eval mode the two must give the same scores.

What is literal here, and therefore slow:

* **Tucker (Eq. 4) per sample.** Every query contracts its own core copy,
  :math:`\mathbf{W}_b = \mathcal{W} \times_1 \mathbf{r}_b` (an einsum to ``[B, d, d]``,
  :math:`B\,d_r\,d^2` MACs per modality), with its own hidden-dropout mask as in the
  official ``TuckERLayer``; then :math:`\mathbf{q}_b = \mathbf{e}_{h_b}^\top \mathbf{W}_b`
  with :func:`torch.bmm`.
* **Experts recomputed for every use (Eq. 2).** The heads go through their own expert pass
  (one expert at a time, :math:`\mathbf{V}_i = \mathbf{W}_i(\mathbf{e} - \mathbf{b}_i)`),
  the candidates through a separate all-entity pass per modality, and the joint modality
  :math:`J` (Eq. 3) runs yet another all-entity expert pass per modality before fusing.
* **Per-query ranking.** :func:`naive_rank` loops over queries; each builds its own filter
  mask from a Python dict of known answers and sorts its score row.

ExID (Eq. 7-9) is not a hot spot (:math:`O(B K d)` per step) and is shared: ``naive.exid``
*is* the MoMoK's ExID module.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from momok_pyg.datasets.schema import get_triples
from momok_pyg.nn import JOINT, MoMoK


class NaiveOutput(NamedTuple):
    scores: Dict[str, Tensor]  #: ``{m: [B, N]}`` logits (incl. ``"joint"``)
    views: Dict[str, Tensor]  #: ``{m: [B, K, d]}`` expert views of the heads
    gates: Dict[str, Tensor]  #: ``{m: [B, K]}`` head gates


class NaiveMoMoK(torch.nn.Module):
    r"""MoMoK written directly from the paper's equations, sharing the parameters of
    :obj:`model` (a :class:`momok_pyg.nn.MoMoK` with experts, ``gate_input="views"``,
    ``loss="ce"`` without label smoothing, ``aggregate="sum"``, i.e. the defaults).

    Same interface as MoMoK where the trainer needs it: ``forward(head, rel)`` (with
    ``.scores`` / ``.views``), :meth:`kgc_loss`, :meth:`predict`, :meth:`kgc_parameters`,
    ``exid``, so :func:`momok_pyg.training.train_epoch` trains it unchanged.
    """
    def __init__(self, model: MoMoK):
        super().__init__()
        if model.experts is None:
            raise ValueError("NaiveMoMoK needs a MoMoK with experts (num_experts >= 1)")
        for m, remoke in model.experts.items():
            if remoke.gate_input != "views":
                raise ValueError(f"NaiveMoMoK implements the paper gate (gate_input='views'); "
                                 f"modality {m!r} uses {remoke.gate_input!r}")
        mj = model.mujod
        if mj.loss_type != "ce" or mj.label_smoothing != 0.0 or mj.aggregate_type != "sum":
            raise ValueError("NaiveMoMoK implements loss='ce' (no label smoothing) and "
                             "aggregate='sum' only")
        self.model = model
        self.exid = model.exid
        self.modalities: List[str] = list(model.expert_modalities)
        self.score_modalities: List[str] = list(model.score_modalities)
        self.num_entities = model.num_entities

    def kgc_parameters(self):
        return self.model.kgc_parameters()

    # -- Eq. 2: ReMoKE, one expert at a time ---------------------------------------------
    def raw_input(self, m: str) -> Tensor:
        r""":math:`\mathbf{e}_m` of all entities; missing rows read the placeholder."""
        inp = self.model.inputs[m]
        if hasattr(inp, "emb"):  # structure: a learned embedding
            return inp.emb.weight
        x = inp.table if inp.table is not None else inp.source
        if inp.placeholder is None:
            return x
        return torch.where(inp.mask.unsqueeze(1), x, inp.placeholder)

    def expert_views(self, m: str, x: Tensor) -> Tensor:
        r""":math:`\mathbf{V}_i = \mathbf{W}_i(\mathrm{drop}(\mathbf{e}) - \mathbf{b}_i)`,
        ``[n, K, d]``, one expert after the other."""
        remoke = self.model.experts[m]
        views = []
        for i in range(remoke.num_experts):
            xi = F.dropout(x, remoke.dropout, self.training)
            views.append((xi - remoke.bias[i]) @ remoke.weight[:, i, :])
        return torch.stack(views, dim=1)

    def gate(self, m: str, views: Tensor, temperature: Optional[Tensor]) -> Tensor:
        r""":math:`G = \mathrm{softmax}((U(\mathbf{V}_i) + \delta_i) / \sigma(\epsilon_r))`,
        noise only in training."""
        remoke = self.model.experts[m]
        logits = (views @ remoke.w_gate).squeeze(-1)
        if remoke.noise and self.training:
            std = F.softplus((views @ remoke.w_noise).squeeze(-1)) + remoke.noise_eps
            logits = logits + torch.randn_like(logits) * std
        logits = logits.float()
        if temperature is not None:
            logits = logits / temperature.float().unsqueeze(-1)
        return torch.softmax(logits, dim=-1)

    def remoke(self, m: str, x: Tensor, temperature: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tensor, Tensor]:
        views = self.expert_views(m, x)
        gates = self.gate(m, views, temperature)
        mixed = (gates.to(views.dtype).unsqueeze(-1) * views).sum(dim=1)
        return mixed, views, gates

    def all_entities(self, m: str) -> Tensor:
        r"""A fresh all-entity expert pass of modality :obj:`m` (relation-free gate)."""
        return self.remoke(m, self.raw_input(m))[0]

    # -- Eq. 3: attention fusion, one head and one modality at a time ------------------
    def fuse(self, fusion, xs: Mapping[str, Tensor]) -> Tensor:
        fused = 0.0
        for h in range(fusion.heads):
            proj = []
            for m in fusion.modalities:
                x = F.dropout(xs[m], fusion.dropout, self.training)
                proj.append(torch.relu(x @ fusion.weight[m][h] + fusion.bias[m][h]))
            p = torch.stack(proj, dim=1)  # [n, M, out]
            if fusion.attn is None:
                alpha = p.new_full(p.shape[:2], 1.0 / len(proj))
            else:
                alpha = torch.softmax((p @ fusion.attn).float(), dim=-1).to(p.dtype)
            fused = fused + (alpha.unsqueeze(-1) * p).sum(dim=1)
        return fused

    # -- Eq. 4: Tucker, one core contraction per sample ---------------------------------
    @staticmethod
    def _bn(bn, x: Tensor, training: bool) -> Tensor:
        if bn is None:
            return x
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            training, bn.momentum, bn.eps)

    def tucker_query(self, scorer, head: Tensor, rel_emb: Tensor) -> Tensor:
        r""":math:`\mathbf{q}_b = \mathrm{BN}(\mathrm{BN}(\mathbf{e}_{h_b})^\top
        \mathrm{drop}(\mathcal{W} \times_1 \mathbf{r}_b))` with one ``[d, d]`` matrix per
        sample."""
        x = F.dropout(self._bn(scorer.bn0, head, self.training), scorer.input_dropout,
                      self.training)
        w = torch.einsum("bi,ijk->bjk", rel_emb, scorer.core)  # [B, d, d]
        w = F.dropout(w, scorer.hidden_dropout, self.training)
        q = torch.bmm(x.unsqueeze(1), w).squeeze(1)
        q = self._bn(scorer.bn1, q, self.training)
        return F.dropout(q, scorer.output_dropout, self.training)

    # -- the model ----------------------------------------------------------------------
    def forward(self, head: Tensor, rel: Tensor) -> NaiveOutput:
        mj = self.model.mujod
        temp = (torch.sigmoid(self.model.temperature.eps.weight[rel].squeeze(-1))
                if self.model.temperature is not None else None)
        heads, views, gates = {}, {}, {}
        for m in self.modalities:  # the heads' own expert pass
            heads[m], views[m], gates[m] = self.remoke(m, self.raw_input(m)[head], temp)
        scores = {}
        for m in self.modalities:  # candidates: a separate all-entity pass per modality
            scorer = mj.scorers[m]
            q = self.tucker_query(scorer, heads[m], scorer.rel_emb.weight[rel])
            scores[m] = q @ self.all_entities(m).t()
        if mj.joint:  # J: the experts of all entities once more, then fusion
            cand_j = self.fuse(mj.entity_fusion, {m: self.all_entities(m)
                                                  for m in self.modalities})
            head_j = self.fuse(mj.entity_fusion, heads)
            rel_table = self.fuse(mj.relation_fusion,
                                  {m: mj.scorers[m].rel_emb.weight for m in self.modalities})
            q = self.tucker_query(mj.scorers[JOINT], head_j, rel_table[rel])
            scores[JOINT] = q @ cand_j.t()
        return NaiveOutput(scores, views, gates)

    def kgc_loss(self, scores: Mapping[str, Tensor], target: Tensor) -> Tensor:
        r"""Eq. 5: :math:`\sum_m -\frac{1}{B}\sum_b \sum_e \tilde y_{be}
        \log\mathrm{softmax}(\mathbf{s}_{m,b})_e`, :math:`\tilde{\mathbf{y}} = \mathbf{y} /
        \lVert\mathbf{y}\rVert_1`."""
        target = (target.to_dense() if target.is_sparse else target).float()  # dense, literally
        y = target / target.sum(dim=1, keepdim=True).clamp_min(1.0)
        return sum(-(y * F.log_softmax(s.float(), dim=1)).sum(1).mean()
                   for s in scores.values())

    def forward_loss(self, head: Tensor, rel: Tensor, target: Tensor):
        r"""The trainer's step: :meth:`forward`, then :meth:`kgc_loss` of its scores."""
        from momok_pyg.nn import MoMoKLoss
        out = self(head, rel)
        return MoMoKLoss(self.kgc_loss(out.scores, target), out.views, out.gates)

    @torch.no_grad()
    def predict(self, head: Tensor, rel: Tensor) -> Tensor:
        r"""Eq. 6: :math:`\sum_m \phi_m` in eval mode."""
        was = self.training
        self.eval()
        try:
            scores = self(head, rel).scores
            total = 0.0
            for m in self.score_modalities:
                total = total + scores[m].float()
            return total
        finally:
            self.train(was)


# ------------------------------------------------------------------------------------------
# per-query filtered ranking
# ------------------------------------------------------------------------------------------
def known_answers(data) -> Dict[Tuple[int, int], set]:
    r"""``{(h, r'): {answers}}`` over train/valid/test, reciprocal ``r + R`` included."""
    num_rel = int(data.num_relations)
    known: Dict[Tuple[int, int], set] = defaultdict(set)
    for split in ("train", "valid", "test"):
        for h, r, t in get_triples(data, split).tolist():
            known[(h, r)].add(t)
            known[(t, r + num_rel)].add(h)
    return known


def rank_one(scores: Tensor, target: int, filtered: set) -> float:
    r"""Realistic filtered rank of :obj:`target` in one score row by sorting: competitors
    are all entities but the known answers; rank :math:`= 1 + g + u/2` with :math:`g` the
    competitors above the target and :math:`u` those tied with it."""
    s = scores.clone()
    mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    if filtered:
        mask[list(filtered)] = True
    mask[target] = False
    s[mask] = float("-inf")
    ordered = torch.sort(s, descending=True).values
    s_t = s[target]
    above = int((ordered > s_t).sum())
    tied = int((ordered == s_t).sum()) - 1
    return 1.0 + above + 0.5 * tied


def naive_rank(score_fn, data, split: str = "test", batch_size: int = 1024,
               max_queries: Optional[int] = None, known: Optional[dict] = None
               ) -> Dict[str, object]:
    r"""Both-direction filtered ranks of :obj:`split` with a Python loop over queries.

    Queries are the tail queries of all triples then the head queries ``(t, r + R)``, as
    :func:`momok_pyg.evaluate.query_tensors`. Only the first :obj:`max_queries` are ranked
    when given (for timing a subset). Returns ``{"ranks", "mrr", "score_seconds",
    "rank_seconds", "count"}``.
    """
    num_rel = int(data.num_relations)
    triples = get_triples(data, split)
    h, r, t = triples.unbind(1)
    head = torch.cat([h, t])
    rel = torch.cat([r, r + num_rel])
    target = torch.cat([t, h])
    if max_queries is not None:
        head, rel, target = head[:max_queries], rel[:max_queries], target[:max_queries]
    known = known_answers(data) if known is None else known
    ranks, score_s, rank_s = [], 0.0, 0.0
    for start in range(0, head.numel(), batch_size):
        sl = slice(start, start + batch_size)
        t0 = time.perf_counter()
        scores = score_fn(head[sl], rel[sl])
        t1 = time.perf_counter()
        for row, (hh, rr, tt) in enumerate(zip(head[sl].tolist(), rel[sl].tolist(),
                                               target[sl].tolist())):
            ranks.append(rank_one(scores[row], tt, known.get((hh, rr), set())))
        score_s += t1 - t0
        rank_s += time.perf_counter() - t1
    ranks_t = torch.tensor(ranks, dtype=torch.float64)
    return {"ranks": ranks_t, "mrr": float((1.0 / ranks_t).mean()) if ranks else float("nan"),
            "score_seconds": score_s, "rank_seconds": rank_s, "count": len(ranks)}


__all__ = ["NaiveMoMoK", "NaiveOutput", "known_answers", "rank_one", "naive_rank"]
