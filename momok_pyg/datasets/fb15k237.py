r"""FB15k-237 (the paper's Table 7), loaded through PyG's own
:class:`torch_geometric.datasets.FB15k_237` and converted into the MMKG schema.

FB15k-237 is structure only. PyG downloads the raw files (``train.txt``, ``valid.txt``,
``test.txt``: one ``head<TAB>relation<TAB>tail`` triple per line) and numbers entities and
relations in order of first appearance over the three files; this class keeps PyG's ids,
recovers the Freebase ids (``/m/...``) and relation paths as ``data["entity"].name`` and
``data.relation_names`` by the same traversal, and builds the :class:`HeteroData` with
:func:`~momok_pyg.datasets.schema.build_mmkg`, so every model, transform and evaluator of
momok_pyg reads it like the four MMKG benchmarks. Features of your own go through the custom
MMKG path: ``CustomMMKG(root, train=".../train.txt", ..., features={"text": "text.npy"})``.

The raw files are checked before PyG parses them (PyG would stop at a malformed line with a
bare unpacking error, and silently drop a last line without its newline): a line that is not
three non-empty tab-separated fields, or a file that does not end with a newline, raises
:class:`~momok_pyg.datasets.schema.MMKGFormatError` naming the file and the line.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch_geometric.data import HeteroData, InMemoryDataset

from .schema import MMKGFormatError, build_mmkg

NAME = "FB15k-237"
RAW_FILES = ("train.txt", "valid.txt", "test.txt")
PYG_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def read_names(paths: List[str]) -> Tuple[Dict[str, int], Dict[str, int]]:
    r"""Entity and relation ids in order of first appearance over :obj:`paths` (PyG's
    numbering), after checking every line.

    Raises:
        MMKGFormatError: a line without three non-empty tab-separated fields, or a file that
            does not end with a newline.
    """
    nodes: Dict[str, int] = {}
    rels: Dict[str, int] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text and not text.endswith("\n"):
            raise MMKGFormatError(f"{path}: the last line has no newline; expected every "
                                  f"triple to end with '\\n' (PyG's parser would drop it)")
        for i, line in enumerate(text.split("\n")[:-1], start=1):
            parts = line.split("\t")
            if len(parts) != 3 or not all(parts):
                raise MMKGFormatError(f"{path}, line {i}: expected 'head<TAB>relation<TAB>"
                                      f"tail', got {line[:80]!r}")
            src, rel, dst = parts
            nodes.setdefault(src, len(nodes))
            nodes.setdefault(dst, len(nodes))
            rels.setdefault(rel, len(rels))
    return nodes, rels


class FB15k237(InMemoryDataset):
    r"""FB15k-237 as one MMKG :class:`HeteroData` (structure only; 14,541 entities, 237
    relations, 272,115 / 17,535 / 20,466 triples), processed by PyG's
    :class:`~torch_geometric.datasets.FB15k_237` in the same folder.

    Args:
        root (str): Data root; the dataset lives in ``<root>/FB15k-237/{raw,processed}``.
        raw_from (str, optional): A folder with ``train.txt``, ``valid.txt``, ``test.txt`` to
            copy instead of downloading.
        transform, pre_transform (callable, optional): As for every
            :class:`~torch_geometric.data.InMemoryDataset`.
        force_reload (bool): Process again.
        features (str, optional): Only ``None`` / ``"none"`` (FB15k-237 has no features).
    """
    def __init__(self, root: str = "datasets", raw_from: Optional[str] = None,
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None, force_reload: bool = False,
                 features: Optional[str] = None):
        if features not in (None, "none"):
            raise ValueError(f"{NAME} has no feature files (features={features!r}); give "
                             f"features of your own through CustomMMKG(..., features=...)")
        self.raw_from = raw_from
        super().__init__(osp.join(root, NAME), transform, pre_transform,
                         force_reload=force_reload)
        self.load(self.processed_paths[0], data_cls=HeteroData)

    @property
    def raw_file_names(self) -> List[str]:
        return list(RAW_FILES)

    @property
    def processed_file_names(self) -> List[str]:
        return ["mmkg.pt"]

    def download(self) -> None:
        if self.raw_from is None:
            from torch_geometric.data import download_url
            from torch_geometric.datasets import FB15k_237
            for name in RAW_FILES:
                download_url(f"{FB15k_237.url}/{name}", self.raw_dir)
            return
        missing = [n for n in RAW_FILES if not osp.isfile(osp.join(self.raw_from, n))]
        if missing:
            raise FileNotFoundError(f"{self.raw_from}: missing {missing}; expected the "
                                    f"FB15k-237 files {list(RAW_FILES)}")
        os.makedirs(self.raw_dir, exist_ok=True)
        for name in RAW_FILES:
            shutil.copyfile(osp.join(self.raw_from, name), osp.join(self.raw_dir, name))

    def process(self) -> None:
        from torch_geometric.datasets import FB15k_237
        nodes, rels = read_names(self.raw_paths)  # validates before PyG parses
        splits = {}
        for split, pyg_split in PYG_SPLITS.items():
            d = FB15k_237(self.root, split=pyg_split)[0]
            splits[split] = torch.stack([d.edge_index[0], d.edge_type, d.edge_index[1]], 1)
            if int(d.num_nodes) != len(nodes):
                raise RuntimeError(f"PyG's FB15k_237 numbered {d.num_nodes} entities, the "
                                   f"raw files hold {len(nodes)}")
        data = build_mmkg(len(nodes), len(rels), splits, entity_names=list(nodes),
                          relation_names=list(rels), name=NAME,
                          sources={s: osp.join(self.raw_dir, f) for s, f in
                                   zip(PYG_SPLITS, RAW_FILES)})
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        self.save([data], self.processed_paths[0])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"
