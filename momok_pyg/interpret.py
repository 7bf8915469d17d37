r"""What a trained MoMoK attends to, per relation (the paper's Fig. 5 and Table 4).

For the queries :math:`(h, r, ?)` of a split (both directions, head queries asked with the
reciprocal relation :math:`r + R`) the model's forward pass gives, for every query,

* the expert gate :math:`\mathbf{G}_m(h, r) \in \Delta^{K}` of every modality :math:`m`
  (ReMoKE, Eq. 2);
* the attention weights :math:`\boldsymbol{\alpha}(h) \in \Delta^{M}` of the joint entity
  embedding over the modalities (MuJoD's entity fusion);

and the joint *relation* embedding has its own weights :math:`\boldsymbol{\beta}_r \in
\Delta^{M}` per relation. :func:`gate_statistics` averages the first two over the queries of
each relation; :func:`gate_report` adds :math:`\boldsymbol{\beta}_r` and, per relation, the
filtered MRR of every modality's own score and the modality that scores it best.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from momok_pyg.datasets.schema import get_triples
from momok_pyg.evaluate import query_tensors
from momok_pyg.training.device import model_device

if TYPE_CHECKING:
    from os import PathLike as _OsPathLike

    from torch_geometric.data import HeteroData

    PathLike = Union[str, _OsPathLike]


@torch.no_grad()
def gate_statistics(model: torch.nn.Module, data: HeteroData, split: str = "test",
                    batch_size: int = 1024) -> Dict[str, Any]:
    r"""Mean expert gates and joint entity-fusion weights of the queries of each relation.

    Returns:
        ``{"relations": [names of the 2R query relations], "count": [2R],
        "gates": {m: [2R, K]}, "fusion": [2R, M] or None, "fusion_modalities": [M]}`` as
        lists; relations without queries get ``nan`` rows.
    """
    was_training = model.training
    model.eval()
    try:
        num_rel = int(data.num_relations)
        head, rel, _, _ = query_tensors(get_triples(data, split), num_rel)
        total = 2 * num_rel
        count = torch.bincount(rel, minlength=total).double()
        gate_sums: Dict[str, Tensor] = {}
        fusion_sum: Optional[Tensor] = None
        device = model_device(model)
        for h, r in zip(head.split(batch_size), rel.split(batch_size)):
            out = model(h.to(device), r.to(device))
            for m, g in out.gates.items():
                acc = gate_sums.setdefault(m, torch.zeros(total, g.size(1), dtype=torch.float64))
                acc.index_add_(0, r, g.double().cpu())
            if out.fusion_weights is not None:
                w = out.fusion_weights.double().cpu()
                if fusion_sum is None:
                    fusion_sum = torch.zeros(total, w.size(1), dtype=torch.float64)
                fusion_sum.index_add_(0, r, w)
    finally:
        model.train(was_training)
    denom = count.unsqueeze(1)
    names = list(getattr(data, "relation_names", None) or [str(i) for i in range(num_rel)])
    return {
        "relations": names + [f"{n} (inverse)" for n in names],
        "count": count.long().tolist(),
        "gates": {m: (s / denom).tolist() for m, s in gate_sums.items()},
        "fusion": None if fusion_sum is None else (fusion_sum / denom).tolist(),
        "fusion_modalities": list(getattr(model, "expert_modalities", [])),
    }


def relation_fusion_weights(model: torch.nn.Module) -> Optional[List[List[float]]]:
    r""":math:`\boldsymbol{\beta}_r` ``[2R, M]`` of the joint relation embedding (``None``
    without the joint modality)."""
    mujod = getattr(model, "mujod", None)
    if mujod is None or getattr(mujod, "relation_fusion", None) is None:
        return None
    with torch.no_grad():
        tables = {m: mujod.scorers[m].rel_emb.weight for m in mujod.modalities}
        return mujod.relation_fusion(tables)[1].double().tolist()


def gate_report(run_dir: PathLike, split: str = "test") -> Dict[str, Any]:
    r"""Everything :mod:`momok_pyg.report` plots for Fig. 5 / Table 4, from the best
    checkpoint of a MoMoK run directory: :func:`gate_statistics`, the relation fusion
    weights, and per relation the MRR of each modality's own score and the best modality."""
    from momok_pyg.training import evaluate_run, load_model
    from momok_pyg.training.loop import environment
    model, data, config = load_model(run_dir)
    device = next(model.parameters()).device
    stats = gate_statistics(model, data, split)
    stats["relation_fusion"] = relation_fusion_weights(model)
    per_modality: Dict[str, Dict[str, float]] = {}
    for m in model.score_modalities:
        res = evaluate_run(run_dir, split=split, modalities=[m], data=data,
                           device=str(device))
        per_modality[m] = {r: v["mrr"] for r, v in res["per_relation"].items()}
    relations = sorted({r for v in per_modality.values() for r in v})
    best = {r: max(per_modality, key=lambda m: per_modality[m].get(r, float("-inf")))
            for r in relations}
    return {"split": split, "statistics": stats, "per_relation_mrr": per_modality,
            "best_modality": best, "env": environment(device)}


__all__ = ["gate_statistics", "relation_fusion_weights", "gate_report"]
