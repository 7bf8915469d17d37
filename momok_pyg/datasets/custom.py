r"""Custom MMKGs from a user's files, and the dataset base class shared with the benchmarks.

A custom MMKG is read with the same parser as the benchmarks (:mod:`.raw`) and built with
:func:`~momok_pyg.datasets.schema.build_mmkg`, so it gets the same
:class:`~torch_geometric.data.HeteroData` schema and the same validation:

.. code-block:: python

    from momok_pyg.datasets import CustomMMKG, read_mmkg

    data = read_mmkg("my_kg/")        # my_kg/{train,valid,test}.txt [+ entity2id/relation2id]
    dataset = CustomMMKG("runs/my_kg", train="my_kg/train.txt", valid="my_kg/valid.txt",
                         test="my_kg/test.txt", features={"image": "img.npy"},
                         masks={"image": "img_mask.npy"})
    data = dataset[0]
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset

from .audit import audit_mmkg, warn_leaks
from .features import as_feature_tensor, check_feature_matrix, load_feature_file
from .raw import index_of, infer_ids, names_to_ids, read_id_file, read_triple_names
from .schema import SPLITS, MMKGFormatError, build_mmkg

__all__ = ["read_mmkg", "load_mmkg_files", "resolve_features", "CustomMMKG",
           "MMKGInMemoryDataset"]

PathLike = Union[str, "os.PathLike[str]"]
FeatureInput = Union[PathLike, Tensor, np.ndarray]


# --------------------------------------------------------------------------- reading

def load_mmkg_files(
    paths: Mapping[str, Optional[PathLike]],
    id_order: str = "first_seen",
) -> Tuple[List[str], List[str], Dict[str, Tensor], Dict[str, str]]:
    r"""Parses id files (optional) and the three split files.

    Args:
        paths: ``{"train", "valid", "test"}`` (required) and ``"entity2id"``,
            ``"relation2id"`` (optional: ``None`` -> inferred from the triples in
            :obj:`id_order`, scanning train, valid, test).
        id_order (str): ``"first_seen"`` or ``"sorted"`` (only for inferred ids).

    Returns:
        ``(entity_names, relation_names, triples, sources)`` with ``triples[split]`` a
        ``[E, 3]`` long tensor and ``sources`` the file of each split (for messages).
    """
    for s in SPLITS:
        if paths.get(s) is None:
            raise MMKGFormatError(f"split '{s}' is missing; expected a path to its triple "
                                  f"file")
    rows = {s: read_triple_names(paths[s]) for s in SPLITS}
    ent_path, rel_path = paths.get("entity2id"), paths.get("relation2id")
    ents = read_id_file(ent_path, "entity") if ent_path is not None else None
    rels = read_id_file(rel_path, "relation") if rel_path is not None else None
    if ents is None or rels is None:
        inf_e, inf_r = infer_ids([rows[s] for s in SPLITS], id_order)
        ents = inf_e if ents is None else ents
        rels = inf_r if rels is None else rels
    e2i, r2i = index_of(ents), index_of(rels)
    e_src = os.fspath(ent_path) if ent_path is not None else "the entities inferred from train"
    r_src = (os.fspath(rel_path) if rel_path is not None else
             "the relations inferred from the splits")
    triples = {s: names_to_ids(paths[s], rows[s], e2i, r2i, e_src, r_src) for s in SPLITS}
    sources = {s: os.fspath(paths[s]) for s in SPLITS}
    return ents, rels, triples, sources


def _load_mask(m: Any, num_entities: int, source: str) -> Tensor:
    if isinstance(m, (str, os.PathLike)):
        source = os.fspath(m)
        m = load_feature_file(m)
    else:
        m = as_feature_tensor(m, source)
    if m.dim() == 2 and m.size(1) == 1:
        m = m.view(-1)
    if m.dim() != 1 or m.numel() != num_entities:
        raise MMKGFormatError(f"{source}: expected a mask of {num_entities} values (one per "
                              f"entity), got shape {tuple(m.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise MMKGFormatError(f"{source}: expected a boolean / 0-1 mask")
    return m.bool()


def resolve_features(
    features: Optional[Mapping[str, FeatureInput]],
    masks: Optional[Mapping[str, Any]],
    num_entities: int,
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, str]]:
    r"""Loads and checks per-modality features (paths ``.npy``/``.pt``/``.pth`` or
    tensors / arrays) and masks (same kinds, bool or 0/1, ``[N]``; default all present).

    Raises:
        MMKGFormatError: wrong row count, not 2-D, NaN/Inf in a present row, a mask for an
            unknown modality, or a bad mask.
    """
    features = dict(features or {})
    masks = dict(masks or {})
    unknown = set(masks) - set(features)
    if unknown:
        raise MMKGFormatError(f"masks given for {sorted(unknown)} but no features for them; "
                              f"expected masks only for modalities in {sorted(features)}")
    feats, msks, sources = {}, {}, {}
    for m, x in features.items():
        if isinstance(x, (str, os.PathLike)):
            src = os.fspath(x)
            x = load_feature_file(x)
        else:
            src = f"features[{m!r}]"
            x = as_feature_tensor(x, src)
        mask = masks.get(m)
        mask = (_load_mask(mask, num_entities, f"masks[{m!r}]") if mask is not None else None)
        check_feature_matrix(x, num_entities, src, mask)
        feats[m], sources[m] = x, src
        if mask is not None:
            msks[m] = mask
    return feats, msks, sources


def _resolve_paths(folder_or_paths: Optional[Union[PathLike, Mapping[str, PathLike]]],
                   **explicit: Optional[PathLike]) -> Dict[str, Optional[str]]:
    keys = SPLITS + ("entity2id", "relation2id")
    paths: Dict[str, Optional[str]] = {k: None for k in keys}
    if isinstance(folder_or_paths, Mapping):
        bad = set(folder_or_paths) - set(keys)
        if bad:
            raise ValueError(f"unknown keys {sorted(bad)}; expected some of {list(keys)}")
        paths.update({k: os.fspath(v) for k, v in folder_or_paths.items() if v is not None})
    elif folder_or_paths is not None:
        folder = os.fspath(folder_or_paths)
        if not osp.isdir(folder):
            raise FileNotFoundError(f"{folder}: not a folder; expected a folder holding "
                                    f"train.txt, valid.txt, test.txt")
        for k in keys:
            p = osp.join(folder, f"{k}.txt")
            if osp.isfile(p) or k in SPLITS:
                paths[k] = p
    for k, v in explicit.items():
        if v is not None:
            paths[k] = os.fspath(v)
    return paths


def read_mmkg(
    folder_or_paths: Optional[Union[PathLike, Mapping[str, PathLike]]] = None,
    *,
    train: Optional[PathLike] = None,
    valid: Optional[PathLike] = None,
    test: Optional[PathLike] = None,
    entity2id: Optional[PathLike] = None,
    relation2id: Optional[PathLike] = None,
    features: Optional[Mapping[str, FeatureInput]] = None,
    masks: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
    id_order: str = "first_seen",
) -> HeteroData:
    r"""Reads an MMKG from text files into the schema's :class:`HeteroData`.

    Args:
        folder_or_paths: A folder with ``train.txt``, ``valid.txt``, ``test.txt`` and
            optionally ``entity2id.txt`` / ``relation2id.txt``, or a mapping with those keys
            (without ``.txt``) to paths. Keyword paths override it.
        train, valid, test: Triple files ``head relation tail [.]`` (names, see
            :mod:`momok_pyg.datasets.raw`).
        entity2id, relation2id: ``name<sep>id`` files. Without them ids are inferred from
            the triples (:obj:`id_order`).
        features: ``{modality: .npy/.pt/.pth path, tensor or array [N, d]}``.
        masks: ``{modality: bool [N]}`` (``True`` = present; path, tensor or array). Rows of
            missing entities may hold anything (even NaN); they are zeroed.
        name (str, optional): ``data.dataset_name`` (default: the folder name or
            ``"custom"``).
        id_order (str): ``"first_seen"`` or ``"sorted"`` for inferred ids.

    Raises:
        MMKGFormatError: for any malformed input, naming the file and line.
    """
    paths = _resolve_paths(folder_or_paths, train=train, valid=valid, test=test,
                           entity2id=entity2id, relation2id=relation2id)
    if name is None:
        name = (osp.basename(osp.normpath(os.fspath(folder_or_paths)))
                if isinstance(folder_or_paths, (str, os.PathLike)) else "custom")
    ents, rels, triples, sources = load_mmkg_files(paths, id_order)
    feats, msks, fsrc = resolve_features(features, masks, len(ents))
    return build_mmkg(len(ents), len(rels), triples, features=feats, masks=msks,
                      entity_names=ents, relation_names=rels, name=name,
                      sources={**sources, **fsrc})


# --------------------------------------------------------------------------- datasets

class MMKGInMemoryDataset(InMemoryDataset):
    r"""Base class of all MMKG datasets: a PyG :class:`InMemoryDataset` holding exactly one
    :class:`HeteroData` (``dataset[0]``; schema in :mod:`momok_pyg.datasets.schema`).

    Subclasses implement :meth:`build` (returning the :class:`HeteroData`) and define
    :attr:`processed_file_names` as ``[<data file>, <audit JSON>]``. Processing writes
    both to temporary names and renames them only when everything succeeded, so a failed
    :meth:`process` never leaves processed files behind. The audit (:func:`audit_mmkg`) is
    stored next to the data, so :meth:`audit` is cheap.
    """

    leak_warning: bool = True

    def build(self) -> HeteroData:  # pragma: no cover - abstract
        raise NotImplementedError

    def process(self) -> None:
        data = self.build()
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        report = audit_mmkg(data)
        data_path, audit_path = self.processed_paths[0], self.processed_paths[1]
        tag = f".{os.getpid()}.tmp"
        tmp_data, tmp_audit = data_path + tag, audit_path + tag
        try:
            with open(tmp_audit, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            self.save([data], tmp_data)
            os.replace(tmp_audit, audit_path)
            os.replace(tmp_data, data_path)
        finally:
            for p in (tmp_data, tmp_audit):
                if osp.exists(p):
                    os.remove(p)

    def _after_init(self) -> None:
        self.load(self.processed_paths[0], data_cls=HeteroData)
        if self.leak_warning:
            warn_leaks(self.audit(), stacklevel=4)

    def audit(self) -> Dict[str, Any]:
        r"""The data audit (see :func:`~momok_pyg.datasets.audit.audit_mmkg`): per split,
        duplicates, triples touching entities unseen in train, valid/test triples also in
        train. Read from the processed JSON (recomputed if that file is gone)."""
        path = self.processed_paths[1]
        if osp.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        return audit_mmkg(self.get(0))


def _fingerprint(h: "hashlib._Hash", x: Any) -> None:
    if x is None:
        h.update(b"<none>")
    elif isinstance(x, (str, os.PathLike)):
        p = osp.abspath(os.fspath(x))
        h.update(p.encode())
        if osp.exists(p):
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    elif isinstance(x, Tensor):
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(str((x.dtype, tuple(x.shape))).encode())
    elif isinstance(x, np.ndarray):
        h.update(np.ascontiguousarray(x).tobytes())
        h.update(str((x.dtype, x.shape)).encode())
    elif isinstance(x, Mapping):
        for k in sorted(x):
            h.update(str(k).encode())
            _fingerprint(h, x[k])
    else:
        h.update(repr(x).encode())


class CustomMMKG(MMKGInMemoryDataset):
    r"""A user's MMKG as a PyG :class:`InMemoryDataset` (one :class:`HeteroData`, the
    schema of :mod:`momok_pyg.datasets.schema`), read with :func:`read_mmkg`.

    Processed files go to ``<root>/processed/`` under a name derived from the inputs
    (paths with their size and mtime, tensor contents, options), so changing an input
    re-processes instead of silently reusing a stale cache.

    Args:
        root (str): Folder for the processed files.
        train, valid, test: Triple files (names, ``head relation tail [.]``).
        entity2id, relation2id (optional): ``name<sep>id`` files; inferred if ``None``.
        features, masks (optional): As in :func:`read_mmkg`.
        name (str): ``data.dataset_name``.
        id_order (str): ``"first_seen"`` or ``"sorted"`` (inferred ids only).
        transform, pre_transform (callable, optional): PyG transforms.
        force_reload (bool): Re-process even if processed files exist.
        log (bool): Print progress.
        leak_warning (bool): Warn (:class:`DataLeakWarning`) if valid/test triples also
            occur in train.
    """

    def __init__(
        self,
        root: str,
        train: PathLike,
        valid: PathLike,
        test: PathLike,
        entity2id: Optional[PathLike] = None,
        relation2id: Optional[PathLike] = None,
        features: Optional[Mapping[str, FeatureInput]] = None,
        masks: Optional[Mapping[str, Any]] = None,
        name: str = "custom",
        id_order: str = "first_seen",
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
        leak_warning: bool = True,
    ) -> None:
        self._paths = {"train": train, "valid": valid, "test": test, "entity2id": entity2id,
                       "relation2id": relation2id}
        self._features, self._masks = features, masks
        self.name, self.id_order, self.leak_warning = name, id_order, leak_warning
        h = hashlib.sha256()
        _fingerprint(h, {"paths": self._paths, "features": features or {},
                         "masks": masks or {}, "name": name, "id_order": id_order})
        self._key = h.hexdigest()[:16]
        super().__init__(root, transform, pre_transform, log=log, force_reload=force_reload)
        self._after_init()

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, "raw")

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, "processed")

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_file_names(self) -> List[str]:
        return [f"data_{self._key}.pt", f"audit_{self._key}.json"]

    def build(self) -> HeteroData:
        return read_mmkg(self._paths, features=self._features, masks=self._masks,
                         name=self.name, id_order=self.id_order)

    def __repr__(self) -> str:
        return f"CustomMMKG({self.name!r})"
