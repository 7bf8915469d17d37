r"""The "w/o joint training" ablation: independently trained single-modality models whose
scores are summed at inference,

.. math::
    s(h, r, t) = \sum_{m \in \mathcal{M}} s_m(h, r, t),

where :math:`s_m` is the score of the model trained on modality :math:`m` *alone*.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor


class EnsembleOutput:
    r"""Same fields as :class:`momok_pyg.nn.MoMoKOutput`: ``scores``, ``views`` and
    ``gates``, each ``{modality: tensor}``."""
    def __init__(self, scores: Dict[str, Tensor], views: Dict[str, Tensor],
                 gates: Dict[str, Tensor]) -> None:
        self.scores, self.views, self.gates = scores, views, gates


class EnsembleScorer(torch.nn.Module):
    r"""Sums the scores of independently trained single-modality models.

    Args:
        members (Dict[str, torch.nn.Module]): modality name -> a model trained on that
            modality alone (anything with ``forward(head, rel)`` returning an output with
            ``scores``/``views``/``gates`` dicts and ``predict(head, rel)``).

    It exposes the scoring interface of :class:`momok_pyg.nn.MoMoK` (``forward``,
    ``predict``, ``aggregate_scores``, ``score_modalities``), so evaluation and inference
    treat it like one model.
    """
    def __init__(self, members: Dict[str, torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("EnsembleScorer needs at least one member model")
        self.members = torch.nn.ModuleDict(dict(members))
        self.exid = None

    @contextlib.contextmanager
    def cached_entities(self) -> Iterator["EnsembleScorer"]:
        r"""Enters every member's ``cached_entities`` context (if it has one)."""
        with contextlib.ExitStack() as stack:
            for member in self.members.values():
                if hasattr(member, "cached_entities"):
                    stack.enter_context(member.cached_entities())
            yield self

    @property
    def score_modalities(self) -> List[str]:
        return list(self.members.keys())

    def _select(self, modalities: Optional[Sequence[str]]) -> List[str]:
        if modalities is None:
            return self.score_modalities
        unknown = [m for m in modalities if m not in self.members]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this ensemble scores "
                             f"{self.score_modalities}")
        return list(modalities)

    def forward(self, head: Tensor, rel: Tensor) -> EnsembleOutput:
        scores: Dict[str, Tensor] = {}
        views: Dict[str, Tensor] = {}
        gates: Dict[str, Tensor] = {}
        for name, member in self.members.items():
            out = member(head, rel)
            scores[name] = member.aggregate_scores(out.scores)
            views.update(out.views)
            gates.update(out.gates)
        return EnsembleOutput(scores, views, gates)

    def aggregate_scores(self, scores: Dict[str, Tensor],
                         modalities: Optional[Sequence[str]] = None) -> Tensor:
        names = self._select(modalities)
        return torch.stack([scores[m] for m in names], dim=0).sum(dim=0)

    @torch.no_grad()
    def predict(self, head: Tensor, rel: Tensor,
                modalities: Optional[Sequence[str]] = None,
                candidates: Optional[slice] = None) -> Tensor:
        names = self._select(modalities)
        return torch.stack([self.members[m].predict(head, rel, candidates=candidates)
                            for m in names], 0).sum(0)
