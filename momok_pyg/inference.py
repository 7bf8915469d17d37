r"""Top-k link prediction with explanations.

For a query :math:`(h, r, ?)` the candidates are ranked by the aggregated score
:math:`s(h, r, t) = \sum_m s_m(h, r, t)` of the model (``model.predict``); for
:math:`(?, r, t)` by :math:`s(t, r + R, h)` (reciprocal relation). Each answer carries its
per-modality scores :math:`s_m`, and the query carries, per modality, the gate weights
:math:`\alpha_{m,1..K}` of the :math:`K` relation-guided experts (ReMoKE) -- which experts
the model listened to for this relation.

.. code-block:: python

    from momok_pyg.inference import Predictor

    predictor = Predictor.from_run("runs/mkg-y")
    result = predictor.tails("Gilles_Mbang_Ondo", "playsFor", k=10)
    for c in result.candidates:
        print(c.rank, c.entity, c.score, c.modality_scores)
    print(result.gates)          # {"structure": [0.2, 0.5, 0.3], "image": [...], ...}
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import torch

from momok_pyg.datasets.schema import ENTITY, get_triples
from momok_pyg.training.batching import OneToNQueries

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

Ref = Union[int, str]


@dataclass
class Candidate:
    r"""One ranked answer."""
    rank: int
    entity_id: int
    entity: str
    score: float
    modality_scores: Dict[str, float]
    known: bool  # the triple is a training fact


@dataclass
class PredictionResult:
    r"""The top-k answers of one query, with the experts' gate weights per modality."""
    direction: str  # "tail" for (h, r, ?), "head" for (?, r, t)
    entity_id: int
    entity: str
    relation_id: int
    relation: str
    filtered: bool
    gates: Dict[str, List[float]]
    candidates: List[Candidate] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class Predictor:
    r"""Ranks entities for single queries with a trained MoMoK (or TuckER / ensemble).

    Args:
        model (torch.nn.Module): A model with ``forward(head, rel)`` returning
            ``scores``/``gates`` dicts and ``aggregate_scores(scores, modalities)``.
        data (HeteroData): The MMKG the model was trained on (names, training triples).
        modalities (Sequence[str], optional): Modalities whose scores are aggregated to rank
            (default: all of the model's, like ``model.predict``).
    """
    def __init__(self, model: torch.nn.Module, data: HeteroData,
                 modalities: Optional[Sequence[str]] = None) -> None:
        self.model = model.eval()
        self.data = data
        self.modalities = None if modalities is None else list(modalities)
        self.num_relations = int(data.num_relations)
        self.entity_names: List[str] = list(data[ENTITY].name)
        self.relation_names: List[str] = list(data.relation_names)
        self._entity_index = {n: i for i, n in enumerate(self.entity_names)}
        self._relation_index = {n: i for i, n in enumerate(self.relation_names)}
        self._known = OneToNQueries(get_triples(data, "train"), len(self.entity_names),
                                    self.num_relations)

    @classmethod
    def from_run(cls, run_dir: Union[str, os.PathLike], data: Optional[HeteroData] = None,
                 modalities: Optional[Sequence[str]] = None) -> "Predictor":
        r"""The predictor of the best-valid checkpoint of a run directory."""
        from momok_pyg.training import load_model
        model, data, config = load_model(run_dir, data=data)
        mods = config.eval_modalities if modalities is None else modalities
        return cls(model, data, modalities=mods)

    # -- name resolution ------------------------------------------------------------------
    @staticmethod
    def _resolve(ref: Ref, index: Dict[str, int], names: List[str], what: str) -> int:
        if isinstance(ref, str) and ref in index:
            return index[ref]
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
            i = int(ref)
            if not 0 <= i < len(names):
                raise KeyError(f"{what} id {i} out of range; expected an id in "
                               f"[0, {len(names)}) or a {what} name")
            return i
        lowered = [i for i, n in enumerate(names) if n.lower() == str(ref).lower()]
        if len(lowered) == 1:
            return lowered[0]
        close = difflib.get_close_matches(str(ref), names, n=5, cutoff=0.6)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"unknown {what} {ref!r}: expected one of the {len(names)} {what} "
                       f"names of the dataset or an id{hint}")

    def entity_id(self, ref: Ref) -> int:
        return self._resolve(ref, self._entity_index, self.entity_names, "entity")

    def relation_id(self, ref: Ref) -> int:
        return self._resolve(ref, self._relation_index, self.relation_names, "relation")

    # -- queries -----------------------------------------------------------------------------
    @torch.no_grad()
    def _rank(self, entity: int, rel: int, k: int, filtered: bool, direction: str,
              query_rel: int) -> PredictionResult:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        head = torch.tensor([entity])
        rel_t = torch.tensor([rel])
        self.model.eval()
        out = self.model(head, rel_t)
        total = self.model.predict(head, rel_t, modalities=self.modalities)[0].float()
        known = self._known.known_mask(head, rel_t)[0]
        ranked = total.masked_fill(known, float("-inf")) if filtered else total
        k = min(k, int((~known).sum()) if filtered else total.numel())
        top = (torch.topk(ranked, k, sorted=True).indices if k > 0
               else torch.empty(0, dtype=torch.long))
        per_mod = {m: s[0].float() for m, s in out.scores.items()}
        candidates = [
            Candidate(rank=i + 1, entity_id=int(e), entity=self.entity_names[int(e)],
                      score=float(total[e]),
                      modality_scores={m: float(s[e]) for m, s in per_mod.items()},
                      known=bool(known[e]))
            for i, e in enumerate(top.tolist())
        ]
        gates = {m: [float(x) for x in g[0].float().tolist()] for m, g in out.gates.items()}
        return PredictionResult(direction=direction, entity_id=entity,
                                entity=self.entity_names[entity], relation_id=query_rel,
                                relation=self.relation_names[query_rel], filtered=filtered,
                                gates=gates, candidates=candidates)

    def tails(self, head: Ref, relation: Ref, k: int = 10,
              filtered: bool = True) -> PredictionResult:
        r"""Top-:obj:`k` tails of :math:`(h, r, ?)`; with :obj:`filtered`, known training
        tails are left out."""
        h, r = self.entity_id(head), self.relation_id(relation)
        return self._rank(h, r, k, filtered, "tail", r)

    def heads(self, relation: Ref, tail: Ref, k: int = 10,
              filtered: bool = True) -> PredictionResult:
        r"""Top-:obj:`k` heads of :math:`(?, r, t)`, asked as :math:`(t, r + R, ?)`; with
        :obj:`filtered`, known training heads are left out."""
        t, r = self.entity_id(tail), self.relation_id(relation)
        return self._rank(t, r + self.num_relations, k, filtered, "head", r)


def format_result(result: PredictionResult) -> str:
    r"""A plain-text table of a :class:`PredictionResult`."""
    if result.direction == "tail":
        q = f"({result.entity}, {result.relation}, ?)"
    else:
        q = f"(?, {result.relation}, {result.entity})"
    lines = [f"query {q}" + ("  [filtered: known train triples left out]"
                             if result.filtered else "")]
    for m, g in result.gates.items():
        lines.append(f"  gates {m:<10s} " + " ".join(f"{x:.3f}" for x in g))
    mods = list(result.candidates[0].modality_scores) if result.candidates else []
    lines.append(f"{'rank':>4}  {'score':>9}  " + "  ".join(f"{m[:9]:>9}" for m in mods)
                 + "  entity")
    for c in result.candidates:
        lines.append(f"{c.rank:>4}  {c.score:>9.4f}  "
                     + "  ".join(f"{c.modality_scores[m]:>9.4f}" for m in mods)
                     + f"  {c.entity}" + ("  (known)" if c.known else ""))
    return "\n".join(lines)
