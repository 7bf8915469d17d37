r"""The four MMKG benchmarks of the MoMoK paper (ICLR 2025, Table 5) as PyG datasets."""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .custom import MMKGInMemoryDataset, load_mmkg_files
from .download import RAW_ENV, fetch_raw_files, verify_raw_dir
from .features import (NAME_DIM, NAME_MODEL, check_feature_matrix, encode_names,
                       load_feature_file, names_to_texts)
from .schema import build_mmkg

__all__ = ["MMKGBenchmark", "DB15K", "MKGW", "MKGY", "KVC16K", "FEATURE_CHOICES",
           "OFFICIAL_FEATURES_URL"]

#: Values of the ``features=`` argument.
FEATURE_CHOICES = (None, "official", "names")
#: Where the upstream README points for the official feature archive.
OFFICIAL_FEATURES_URL = "https://drive.google.com/file/d/1nRHdeWiVi9d_FKli3x7sO87ARasad39w"
#: Official feature files: modality -> upstream file stem (``<stem>.pth``; ``.pt`` / ``.npy``
#: also accepted).
OFFICIAL_FILES = {"image": "img_features", "text": "text_features"}
RAW_FILES = ["entity2id.txt", "relation2id.txt", "train.txt", "valid.txt", "test.txt"]


class MMKGBenchmark(MMKGInMemoryDataset):
    r"""Base class of the MMKG benchmarks: a PyG :class:`InMemoryDataset` whose single item
    (``dataset[0]``) is a :class:`~torch_geometric.data.HeteroData`:

    .. code-block:: text

        data["entity"].num_nodes / .name           N, list[str] (upstream entity names)
        data["entity"][m], data["entity"][m+"_mask"]  float32 [N, d_m], bool [N]
                                                      for m in data.modalities
        data["entity", "relation", "entity"]
            .{train,valid,test}_edge_index / _edge_type   [2, E_s] / [E_s]
            .edge_index / .edge_type                      the train graph
        data.num_relations, data.relation_names, data.modalities, data.dataset_name

    (full schema: :mod:`momok_pyg.datasets.schema`). Relation ids are the upstream ones;
    reciprocal relations :math:`r + R` are a model convention and not stored.

    Files live in ``<root>/<folder>/raw`` (the upstream files, byte-identical, SHA-256
    verified on every processing) and ``<root>/<folder>/processed``. Raw files are taken
    from :obj:`raw_from`, ``$MOMOK_PYG_RAW/<folder>/`` or downloaded from upstream pinned to
    commit ``99c2df1`` (see :mod:`momok_pyg.datasets.download`). Duplicate triples and
    train/valid/test overlaps are kept exactly as published; :meth:`audit` reports them and
    a :class:`~momok_pyg.datasets.audit.DataLeakWarning` is emitted when valid/test triples
    also occur in train.

    Args:
        root (str): Data root (default ``"datasets"``, relative to the working directory).
        features (str, optional): Modality features:

            * ``None``: structure only (``data.modalities == []``);
            * ``"official"``: the upstream ``img_features.pth`` / ``text_features.pth``
              (modalities ``"image"``, ``"text"``), which the user must place in
              ``raw_dir`` (see :attr:`OFFICIAL_FEATURES_URL`). Loaded safely
              (``torch.load(weights_only=True)``; tensors or NumPy arrays; ``.npy`` also
              accepted). All-zero rows are marked missing; upstream filled entities without
              an image with the *mean* image feature, such rows cannot be told apart and
              are marked present;
            * ``"names"``: modality ``"text"``, the 384-d ``all-MiniLM-L6-v2`` embedding of
              the entity name (:func:`~momok_pyg.datasets.features.name_to_text`), computed
              once and cached in ``processed/``. Needs ``pip install -e ".[text]"``.
        transform, pre_transform (callable, optional): PyG transforms.
        raw_from (str, optional): Folder holding the upstream files of this benchmark.
        url (str, optional): Base URL replacing upstream (``<url>/<folder>/<file>``); also
            ``$MOMOK_PYG_URL``.
        force_reload (bool): Re-process even if processed files exist.
        log (bool): Print progress.
        leak_warning (bool): Emit the :class:`DataLeakWarning` on load.
        batch_size (int): Encoder batch size for ``features="names"``.
    """

    #: Upstream folder name under ``datasets/``.
    folder: str = ""
    #: Name in the paper.
    paper_name: str = ""
    #: Paper's Table 5: entities, relations, train, valid, test.
    counts: Dict[str, int] = {}
    #: Paper's Table 5: official feature dims.
    official_dims: Dict[str, int] = {}

    def __init__(
        self,
        root: str = "datasets",
        features: Optional[str] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        raw_from: Optional[str] = None,
        url: Optional[str] = None,
        force_reload: bool = False,
        log: bool = True,
        leak_warning: bool = True,
        batch_size: int = 256,
    ) -> None:
        if features not in FEATURE_CHOICES:
            raise ValueError(f"unknown features={features!r}; expected one of "
                             f"{list(FEATURE_CHOICES)}")
        self.features = features
        self.raw_from = None if raw_from is None else os.fspath(raw_from)
        self.url = url
        self.leak_warning = leak_warning
        self.batch_size = batch_size
        super().__init__(os.fspath(root), transform, pre_transform, log=log,
                         force_reload=force_reload)
        self._after_init()

    # -- PyG conventions -------------------------------------------------------------
    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.folder, "raw")

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, self.folder, "processed")

    @property
    def raw_file_names(self) -> List[str]:
        return list(RAW_FILES)

    @property
    def processed_file_names(self) -> List[str]:
        suffix = {None: "", "official": "_official", "names": "_names-minilm"}[self.features]
        return [f"data{suffix}.pt", "audit.json"]

    def download(self) -> None:
        fetch_raw_files(self.folder, self.raw_dir, RAW_FILES, url=self.url,
                        raw_from=self.raw_from, log=self.log)

    # -- processing ------------------------------------------------------------------
    def build(self) -> HeteroData:
        verify_raw_dir(self.raw_dir, self.folder, RAW_FILES)
        paths = {osp.splitext(f)[0]: osp.join(self.raw_dir, f) for f in RAW_FILES}
        ents, rels, triples, sources = load_mmkg_files(paths)
        if self.features == "official":
            feats, masks, fsrc = self._official_features(len(ents))
        elif self.features == "names":
            feats, masks, fsrc = self._name_features(ents)
        else:
            feats, masks, fsrc = {}, {}, {}
        return build_mmkg(len(ents), len(rels), triples, features=feats, masks=masks,
                          entity_names=ents, relation_names=rels, name=self.paper_name,
                          sources={**sources, **fsrc})

    def _find_official(self, stem: str) -> Optional[str]:
        dirs = [self.raw_dir]
        if self.raw_from is not None:
            dirs.append(self.raw_from)
        if os.environ.get(RAW_ENV):
            dirs.append(osp.join(os.environ[RAW_ENV], self.folder))
        for d in dirs:
            for ext in (".pth", ".pt", ".npy"):
                p = osp.join(d, stem + ext)
                if osp.isfile(p):
                    return p
        return None

    def _official_features(self, n: int) -> Tuple[dict, dict, dict]:
        feats, masks, srcs = {}, {}, {}
        for m, stem in OFFICIAL_FILES.items():
            path = self._find_official(stem)
            if path is None:
                raise FileNotFoundError(
                    f"features='official' needs {stem}.pth for {self.paper_name}: put the "
                    f"upstream file at {osp.join(self.raw_dir, stem + '.pth')} (.pt or .npy "
                    f"also accepted). It comes from the archive linked in the upstream MoMoK "
                    f"README ({OFFICIAL_FEATURES_URL}; unzip and take "
                    f"datasets/{self.folder}/{stem}.pth). Without it, features='names' "
                    f"(entity-name text embeddings) works offline")
            x = check_feature_matrix(load_feature_file(path), n, path)
            feats[m], srcs[m] = x, path
            masks[m] = x.abs().sum(dim=1) > 0
        return feats, masks, srcs

    def _name_features(self, names: List[str]) -> Tuple[dict, dict, dict]:
        texts, mask = names_to_texts(names, self.paper_name)
        src = f"{self.paper_name} entity names ({NAME_MODEL})"
        if not bool(mask.any()):
            warnings.warn(
                f"{self.paper_name}: entity names are bare ids without label text (e.g. "
                f"{names[0]!r}); the 'text' modality is marked missing for all {len(names)} "
                f"entities", UserWarning, stacklevel=3)
            return ({"text": torch.zeros(len(names), NAME_DIM)}, {"text": mask},
                    {"text": src})
        key = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
        cache = osp.join(self.processed_dir, "names-minilm.pt")
        emb: Optional[Tensor] = None
        if osp.exists(cache):
            saved = torch.load(cache, weights_only=True)
            if saved.get("key") == key and saved.get("model") == NAME_MODEL:
                emb = saved["embeddings"]
        if emb is None:
            present = mask.nonzero().view(-1).tolist()
            emb = torch.zeros(len(names), NAME_DIM)
            emb[mask] = encode_names([texts[i] for i in present], batch_size=self.batch_size,
                                     show_progress=self.log)
            tmp = f"{cache}.{os.getpid()}.tmp"
            try:
                torch.save({"key": key, "model": NAME_MODEL, "embeddings": emb}, tmp)
                os.replace(tmp, cache)
            finally:
                if osp.exists(tmp):
                    os.remove(tmp)
        _warn_collapsed(emb[mask], self.paper_name)
        return {"text": emb}, {"text": mask}, {"text": src}

    def __repr__(self) -> str:
        feats = "" if self.features is None else f"features={self.features!r}"
        return f"{self.__class__.__name__}({feats})"


def _warn_collapsed(emb: Tensor, name: str, threshold: float = 0.01) -> int:
    r"""Warns when many names get the same embedding (e.g. the encoder's tokenizer maps
    their characters to ``[UNK]``); returns the number of entities sharing an embedding
    with another one."""
    if emb.size(0) == 0:
        return 0
    _, inverse, counts = torch.unique((emb * 1e4).round(), dim=0, return_inverse=True,
                                      return_counts=True)
    shared = int((counts[inverse] > 1).sum())
    if shared > threshold * emb.size(0):
        warnings.warn(
            f"{name}: {shared} of {emb.size(0)} entity-name embeddings are shared with another "
            f"entity ({int(counts.numel())} distinct): {NAME_MODEL} cannot tell these names "
            f"apart (out-of-vocabulary characters), so the 'names' text modality carries "
            f"little signal for them", UserWarning, stacklevel=4)
    return shared


class DB15K(MMKGBenchmark):
    r"""The DB15K MMKG (DBpedia subset) from the MoMoK paper, upstream folder ``DB15K``.

    12,842 entities, 279 relations, 79,222 / 9,904 / 9,902 train / valid / test triples.
    Entity names are DBpedia URIs ``<http://dbpedia.org/resource/Name>`` (some non-ASCII).
    Official features: image 4096-d, text 768-d. Audit: 8,719 of the 9,904 valid triples
    also occur in train (a :class:`DataLeakWarning` is emitted); 77 test triples touch an
    entity never seen in train.

    Args: see :class:`MMKGBenchmark`.
    """
    folder = "DB15K"
    paper_name = "DB15K"
    counts = {"entities": 12842, "relations": 279, "train": 79222, "valid": 9904,
              "test": 9902}
    official_dims = {"image": 4096, "text": 768}


class MKGW(MMKGBenchmark):
    r"""The MKG-W MMKG (Wikidata subset) from the MoMoK paper, upstream folder ``MKG-W``.

    15,000 entities, 169 relations, 34,196 / 4,276 / 4,274 train / valid / test triples.
    Entity names are bare Wikidata URIs (``http://www.wikidata.org/entity/Q370252``) with
    no label text, so ``features="names"`` yields an all-missing ``"text"`` modality (with
    a warning). Official features: image 383-d, text 384-d. Audit: 306 test / 333 valid
    triples touch entities never seen in train (491 such entities).

    Args: see :class:`MMKGBenchmark`.
    """
    folder = "MKG-W"
    paper_name = "MKG-W"
    counts = {"entities": 15000, "relations": 169, "train": 34196, "valid": 4276,
              "test": 4274}
    official_dims = {"image": 383, "text": 384}


class MKGY(MMKGBenchmark):
    r"""The MKG-Y MMKG (YAGO subset) from the MoMoK paper, upstream folder ``MKG-Y``.

    15,000 entities, 28 relations, 21,310 / 2,665 / 2,663 train / valid / test triples.
    Entity names are YAGO names (``Gilles_Mbang_Ondo``). Official features: image 383-d,
    text 384-d. Audit: 388 test / 400 valid triples touch entities never seen in train
    (612 such entities).

    Args: see :class:`MMKGBenchmark`.
    """
    folder = "MKG-Y"
    paper_name = "MKG-Y"
    counts = {"entities": 15000, "relations": 28, "train": 21310, "valid": 2665,
              "test": 2663}
    official_dims = {"image": 383, "text": 384}


class KVC16K(MMKGBenchmark):
    r"""The KVC16K MMKG (Kuaishou short-video concepts) from the MoMoK paper, upstream
    folder ``Kuai16K``.

    16,015 entities, 4 relations (named ``0``..``3``), 180,190 / 22,523 / 22,525 train /
    valid / test triples. Entity names are Chinese (a few English, e.g. ``iPhone_XR``); the
    name encoder of ``features="names"`` is English-centric: its tokenizer maps many
    Chinese characters to ``[UNK]``, so only 3,957 of the 16,015 name embeddings are
    distinct (a warning says so) and that modality carries a weak signal. Official features: image 768-d, text 768-d. Audit: 171 duplicate train
    triples; 48 test and 30 valid triples also occur in train (a :class:`DataLeakWarning`
    is emitted).

    Args: see :class:`MMKGBenchmark`.
    """
    folder = "Kuai16K"
    paper_name = "KVC16K"
    counts = {"entities": 16015, "relations": 4, "train": 180190, "valid": 22523,
              "test": 22525}
    official_dims = {"image": 768, "text": 768}
