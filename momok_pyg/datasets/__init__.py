r"""MMKG datasets: the MoMoK benchmarks, custom graphs and the shared schema.

Every dataset is one :class:`torch_geometric.data.HeteroData` following
:mod:`momok_pyg.datasets.schema` (built only through :func:`build_mmkg`).
"""
from .schema import (ENTITY, REL, SPLITS, STRUCTURE, MMKGFormatError, build_mmkg, get_triples,
                     set_triples, feature_modalities, modality_features, modality_masks, summary)
from .audit import DataLeakWarning, audit_mmkg, format_audit
from .download import ChecksumError, fetch_raw_files
from .features import encode_names, load_feature_file, name_to_text, names_to_texts
from .custom import CustomMMKG, MMKGInMemoryDataset, read_mmkg
from .benchmarks import DB15K, KVC16K, MKGW, MKGY, MMKGBenchmark
from .fb15k237 import FB15k237
from .registry import (DATASETS, list_datasets, load_dataset, register_dataset,
                       unregister_dataset)
from .synthetic import SyntheticMMKG, make_synthetic_mmkg


def _synthetic(root=None, **kwargs):
    # load_dataset("synthetic") caches under <root>/synthetic; root=None generates in memory
    return SyntheticMMKG(None if root is None else f"{root}/synthetic", **kwargs)


register_dataset("synthetic", _synthetic)

__all__ = [
    "ENTITY", "REL", "SPLITS", "STRUCTURE", "MMKGFormatError", "build_mmkg", "get_triples",
    "set_triples", "feature_modalities", "modality_features", "modality_masks", "summary",
    "DataLeakWarning", "audit_mmkg", "format_audit", "ChecksumError", "fetch_raw_files",
    "encode_names", "load_feature_file", "name_to_text", "names_to_texts", "CustomMMKG",
    "MMKGInMemoryDataset", "read_mmkg", "DB15K", "KVC16K", "MKGW", "MKGY", "MMKGBenchmark",
    "FB15k237",
    "DATASETS", "list_datasets", "load_dataset", "register_dataset", "unregister_dataset",
    "SyntheticMMKG", "make_synthetic_mmkg",
]
