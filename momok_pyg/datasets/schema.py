r"""The one schema every multi-modal knowledge graph (MMKG) in :mod:`momok_pyg` follows.

An MMKG is a single :class:`torch_geometric.data.HeteroData` with one node type ``"entity"``
and one edge type ``("entity", "relation", "entity")``:

.. code-block:: text

    data["entity"].num_nodes            int N
    data["entity"].name                 list[str] of length N (entity names, e.g. URIs)
    data["entity"][m]                   float32 [N, d_m] raw feature of modality m
                                        (for every m in data.modalities, e.g. "image", "text")
    data["entity"][m + "_mask"]         bool [N]; False = modality m is missing for that entity.
                                        Rows of missing entities are zero and MUST NOT be read
                                        as features: models replace them (MoMoK: a learned
                                        placeholder).
    data[REL].edge_index / edge_type    the *training* graph, [2, E_train] / [E_train]
                                        (what a PyG encoder such as RGCNConv consumes)
    data[REL].{s}_edge_index            [2, E_s] head/tail ids of split s in {train, valid, test}
    data[REL].{s}_edge_type             [E_s] relation ids in [0, num_relations)
    data.num_relations                  int R (reciprocal relations r + R are a model concern)
    data.relation_names                 list[str] of length R
    data.modalities                     list[str] feature modalities in a fixed order
                                        (the structure modality is implicit: it has no stored
                                        feature and is learned from scratch)
    data.dataset_name                   str

:func:`build_mmkg` is the only constructor; every dataset (benchmarks, custom, synthetic)
goes through it, so all of them are validated the same way.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

ENTITY = "entity"
REL = ("entity", "relation", "entity")
SPLITS = ("train", "valid", "test")
STRUCTURE = "structure"


class MMKGFormatError(ValueError):
    r"""Raised for malformed MMKG input. The message names the source (file and line when
    there is one) and what was expected."""


def _as_tensor(x, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def build_mmkg(
    num_entities: int,
    num_relations: int,
    triples: Mapping[str, Tensor],
    features: Optional[Mapping[str, Tensor]] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    entity_names: Optional[Sequence[str]] = None,
    relation_names: Optional[Sequence[str]] = None,
    name: str = "mmkg",
    sources: Optional[Mapping[str, str]] = None,
) -> HeteroData:
    r"""Builds and validates one MMKG :class:`HeteroData`.

    Args:
        num_entities (int): Number of entities :math:`N`.
        num_relations (int): Number of relations :math:`R`.
        triples (Mapping[str, Tensor]): For each split in ``("train", "valid", "test")`` a
            long tensor ``[E_s, 3]`` of ``(head, relation, tail)`` ids.
        features (Mapping[str, Tensor], optional): Modality name to ``[N, d_m]`` features
            (tensor or array). Missing rows are given by :obj:`masks`.
        masks (Mapping[str, Tensor], optional): Modality name to bool ``[N]``
            (``True`` = present). Defaults to all present. Rows of missing entities are
            set to zero.
        entity_names, relation_names (Sequence[str], optional): Names; default ``"0".."N-1"``.
        name (str): Dataset name stored as ``data.dataset_name``.
        sources (Mapping[str, str], optional): Where each split/modality came from (a file
            path), used in error messages.
    """
    sources = dict(sources or {})
    features = dict(features or {})
    masks = dict(masks or {})
    if num_entities <= 0 or num_relations <= 0:
        raise MMKGFormatError(
            f"{name}: expected at least one entity and one relation "
            f"(got {num_entities} entities, {num_relations} relations)")

    data = HeteroData()
    data[ENTITY].num_nodes = int(num_entities)
    data[ENTITY].name = (list(entity_names) if entity_names is not None else
                         [str(i) for i in range(num_entities)])
    if len(data[ENTITY].name) != num_entities:
        raise MMKGFormatError(f"{name}: expected {num_entities} entity names, "
                              f"got {len(data[ENTITY].name)}")

    for split in SPLITS:
        src = sources.get(split, f"{name} split '{split}'")
        if split not in triples:
            raise MMKGFormatError(f"{src}: split '{split}' is missing")
        t = _as_tensor(triples[split], torch.long)
        if t.dim() != 2 or t.size(1) != 3:
            raise MMKGFormatError(
                f"{src}: expected a [E, 3] tensor of (head, relation, tail), got shape "
                f"{tuple(t.shape)}")
        if t.numel() == 0:
            raise MMKGFormatError(f"{src}: split '{split}' is empty; expected at least one "
                                  f"triple")
        for col, bound, what in ((0, num_entities, "head"), (1, num_relations, "relation"),
                                 (2, num_entities, "tail")):
            bad = (t[:, col] < 0) | (t[:, col] >= bound)
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise MMKGFormatError(
                    f"{src}: triple {row + 1} has {what} id {int(t[row, col])}; expected an "
                    f"id in [0, {bound})")
        data[REL][f"{split}_edge_index"] = t[:, [0, 2]].t().contiguous()
        data[REL][f"{split}_edge_type"] = t[:, 1].contiguous()
    data[REL].edge_index = data[REL].train_edge_index
    data[REL].edge_type = data[REL].train_edge_type

    modalities = []
    for m, x in features.items():
        src = sources.get(m, f"{name} modality '{m}'")
        if m == STRUCTURE or m.endswith("_mask") or m in ("name", "num_nodes", "x"):
            raise MMKGFormatError(f"{src}: '{m}' is a reserved name; expected another "
                                  f"modality name")
        x = _as_tensor(x, torch.float32)
        if x.dim() != 2 or x.size(0) != num_entities:
            raise MMKGFormatError(
                f"{src}: expected features of shape [{num_entities}, d] (one row per entity), "
                f"got {tuple(x.shape)}")
        mask = masks.get(m)
        mask = (torch.ones(num_entities, dtype=torch.bool) if mask is None else
                _as_tensor(mask, torch.bool))
        if mask.shape != (num_entities, ):
            raise MMKGFormatError(f"{src}: expected a mask of shape [{num_entities}], got "
                                  f"{tuple(mask.shape)}")
        finite = torch.isfinite(x).all(dim=1)
        bad = mask & ~finite
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise MMKGFormatError(
                f"{src}: row {row} (entity {data[ENTITY].name[row]!r}) has NaN/Inf values; "
                f"expected finite features (mark missing entities with a mask instead)")
        x = torch.where(mask.unsqueeze(1), x, torch.zeros((), dtype=x.dtype)).contiguous()
        data[ENTITY][m] = x
        data[ENTITY][f"{m}_mask"] = mask
        modalities.append(m)

    data.num_relations = int(num_relations)
    data.relation_names = (list(relation_names) if relation_names is not None else
                           [str(i) for i in range(num_relations)])
    if len(data.relation_names) != num_relations:
        raise MMKGFormatError(f"{name}: expected {num_relations} relation names, "
                              f"got {len(data.relation_names)}")
    data.modalities = modalities
    data.dataset_name = name
    return data


def get_triples(data: HeteroData, split: str) -> Tensor:
    r"""Returns the ``[E, 3]`` long tensor of ``(head, relation, tail)`` of :obj:`split`."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
    store = data[REL]
    ei, et = store[f"{split}_edge_index"], store[f"{split}_edge_type"]
    return torch.stack([ei[0], et, ei[1]], dim=1)


def set_triples(data: HeteroData, split: str, triples: Tensor) -> HeteroData:
    r"""Replaces the triples of :obj:`split` in place (keeping ``edge_index`` / ``edge_type``
    equal to the training graph) and returns :obj:`data`."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
    store = data[REL]
    store[f"{split}_edge_index"] = triples[:, [0, 2]].t().contiguous()
    store[f"{split}_edge_type"] = triples[:, 1].contiguous()
    if split == "train":
        store.edge_index = store.train_edge_index
        store.edge_type = store.train_edge_type
    return data


def feature_modalities(data: HeteroData) -> list:
    r"""The feature modalities of :obj:`data` (``data.modalities``), in order."""
    return list(getattr(data, "modalities", []) or [])


def modality_features(data: HeteroData) -> Dict[str, Tensor]:
    r"""``{m: [N, d_m]}`` for every feature modality."""
    return {m: data[ENTITY][m] for m in feature_modalities(data)}


def modality_masks(data: HeteroData) -> Dict[str, Tensor]:
    r"""``{m: bool [N]}`` (``True`` = present) for every feature modality."""
    return {m: data[ENTITY][f"{m}_mask"] for m in feature_modalities(data)}


def summary(data: HeteroData) -> Dict[str, object]:
    r"""Counts of one MMKG, as in the paper's Table 5."""
    out = {
        "entities": int(data[ENTITY].num_nodes),
        "relations": int(data.num_relations),
    }
    for split in SPLITS:
        out[split] = int(data[REL][f"{split}_edge_type"].numel())
    for m in feature_modalities(data):
        x, mask = data[ENTITY][m], data[ENTITY][f"{m}_mask"]
        out[f"{m}_dim"] = int(x.size(1))
        out[f"{m}_present"] = int(mask.sum())
    return out

