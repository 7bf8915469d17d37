r"""Data audit of an MMKG: split overlaps, duplicates and unseen entities.

For every split :math:`s \in \{\mathrm{train}, \mathrm{valid}, \mathrm{test}\}` with triple
multiset :math:`T_s` and the set of entities seen in training
:math:`V_{\mathrm{train}} = \{h, t : (h, r, t) \in T_{\mathrm{train}}\}`:

* ``triples``: :math:`|T_s|` (with repetitions);
* ``duplicates``: :math:`|T_s| - |\mathrm{set}(T_s)|` (extra copies inside the split);
* ``unseen_entity_triples``: triples with :math:`h \notin V_{\mathrm{train}}` or
  :math:`t \notin V_{\mathrm{train}}` (they cannot be scored by a purely transductive model
  from training evidence; 0 for train by definition);
* ``in_train`` (valid/test): triples of :math:`T_s` that also occur in
  :math:`T_{\mathrm{train}}` -- a **leak**: a model that memorises training triples gets
  them right, inflating the metric (DB15K: 8,719 of 9,904 valid triples);
* ``in_valid`` (test): test triples also in valid.

Also ``entities_unseen_in_train`` (:math:`N - |V_{\mathrm{train}}|`). Leaks are reported with
a :class:`DataLeakWarning` (:func:`warn_leaks`).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .schema import ENTITY, SPLITS, get_triples

__all__ = ["DataLeakWarning", "audit_mmkg", "warn_leaks", "format_audit"]


class DataLeakWarning(UserWarning):
    r"""Evaluation triples also occur in the training split."""


def _keys(t: Tensor, num_entities: int, num_relations: int) -> Tensor:
    return (t[:, 0] * num_relations + t[:, 1]) * num_entities + t[:, 2]


def _isin(keys: Tensor, sorted_unique: Tensor) -> Tensor:
    # torch.isin is slow on CPU for int64 keys of this size; a binary search is not.
    pos = torch.searchsorted(sorted_unique, keys).clamp_(max=max(sorted_unique.numel() - 1, 0))
    return sorted_unique[pos] == keys


def audit_mmkg(data: HeteroData) -> Dict[str, Any]:
    r"""Audits one MMKG (see the module docstring for the definitions).

    Returns:
        ``{"dataset", "num_entities", "num_relations", "entities_unseen_in_train",
        "splits": {split: {"triples", "duplicates", "unseen_entity_triples", "in_train"?,
        "in_valid"?}}}`` -- plain ``int`` values, JSON-serialisable.
    """
    n = int(data[ENTITY].num_nodes)
    r = int(data.num_relations)
    trip = {s: get_triples(data, s) for s in SPLITS}
    keys = {s: _keys(t, n, r) for s, t in trip.items()}
    uniq = {s: torch.unique(k) for s, k in keys.items()}
    seen = torch.zeros(n, dtype=torch.bool)
    seen[trip["train"][:, 0]] = True
    seen[trip["train"][:, 2]] = True

    splits: Dict[str, Dict[str, int]] = {}
    for s in SPLITS:
        t = trip[s]
        out = {
            "triples": int(t.size(0)),
            "duplicates": int(t.size(0) - uniq[s].numel()),
            "unseen_entity_triples": int((~seen[t[:, 0]] | ~seen[t[:, 2]]).sum()),
        }
        if s != "train":
            out["in_train"] = int(_isin(keys[s], uniq["train"]).sum())
        if s == "test":
            out["in_valid"] = int(_isin(keys[s], uniq["valid"]).sum())
        splits[s] = out
    return {
        "dataset": str(getattr(data, "dataset_name", "mmkg")),
        "num_entities": n,
        "num_relations": r,
        "entities_unseen_in_train": int((~seen).sum()),
        "splits": splits,
    }


def format_audit(report: Dict[str, Any]) -> str:
    r"""One human-readable line per split."""
    lines = [f"{report['dataset']}: {report['num_entities']} entities, "
             f"{report['num_relations']} relations, {report['entities_unseen_in_train']} "
             f"entities never in train"]
    for s, d in report["splits"].items():
        extra = "".join(f", {k.replace('_', ' ')} {v}" for k, v in d.items()
                        if k not in ("triples", ))
        lines.append(f"  {s}: {d['triples']} triples{extra}")
    return "\n".join(lines)


def warn_leaks(report: Dict[str, Any], stacklevel: int = 2) -> bool:
    r"""Emits a :class:`DataLeakWarning` if valid/test triples also occur in train.

    Returns:
        Whether a warning was emitted.
    """
    parts = []
    for s in ("valid", "test"):
        d = report["splits"][s]
        if d.get("in_train", 0):
            pct = 100.0 * d["in_train"] / max(d["triples"], 1)
            parts.append(f"{d['in_train']} of {d['triples']} {s} triples ({pct:.1f}%)")
    if not parts:
        return False
    warnings.warn(
        DataLeakWarning(
            f"{report['dataset']}: {' and '.join(parts)} also occur in the train split "
            f"(upstream split as published): a model has seen them in training, so metrics "
            f"on them measure memorisation and are inflated; see dataset.audit()."), stacklevel=stacklevel)
    return True
