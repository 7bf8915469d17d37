r"""Fetching and verifying the raw benchmark files.

Sources, tried in this order for every missing file of a benchmark folder:

1. ``raw_from=`` (a folder holding the files themselves, e.g. ``/data/mmkg/MKG-Y``);
2. the environment variable ``MOMOK_PYG_RAW`` (a folder holding ``<folder>/`` subfolders,
   e.g. ``$MOMOK_PYG_RAW/MKG-Y/train.txt``), when that subfolder has the file;
3. the network: ``<base>/<folder>/<file>`` with ``base`` = the ``url=`` argument, else
   ``$MOMOK_PYG_URL``, else :obj:`~momok_pyg.datasets.checksums.DEFAULT_BASE_URL`
   (upstream pinned to one commit).

Every file is copied/downloaded into a staging folder *inside* ``raw_dir`` while its SHA-256
is computed; only when **all** requested files match their pinned size and SHA-256 are they
moved into ``raw_dir`` (``os.replace``, atomic on one file system). On any failure the
staging folder is removed, so ``raw_dir`` never holds a partial or unverified file.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Dict, Iterable, List, Optional, Tuple

from .checksums import CHECKSUMS, DEFAULT_BASE_URL
from .schema import MMKGFormatError

__all__ = [
    "ChecksumError", "sha256_file", "verify_file", "verify_raw_dir", "fetch_raw_files",
    "base_url", "RAW_ENV", "URL_ENV",
]

RAW_ENV = "MOMOK_PYG_RAW"
URL_ENV = "MOMOK_PYG_URL"
_CHUNK = 1 << 20


class ChecksumError(MMKGFormatError):
    r"""A raw file does not match its pinned size / SHA-256."""


def sha256_file(path: str) -> Tuple[int, str]:
    r"""Returns ``(size in bytes, sha256 hex digest)`` of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _expected(folder: str, file: str) -> Tuple[int, str]:
    try:
        return CHECKSUMS[folder][file]
    except KeyError:
        raise KeyError(f"no pinned checksum for {folder}/{file}; known folders: "
                       f"{sorted(CHECKSUMS)}") from None


def _check(size: int, digest: str, folder: str, file: str, origin: str) -> None:
    exp_size, exp_sha = _expected(folder, file)
    if size != exp_size or digest != exp_sha:
        raise ChecksumError(
            f"{origin}: checksum mismatch for {folder}/{file}: expected {exp_size} bytes with "
            f"sha256 {exp_sha}, got {size} bytes with sha256 {digest}. The file is not the "
            f"upstream one (corrupted, truncated or modified); it was not used")


def verify_file(path: str, folder: str, file: Optional[str] = None) -> None:
    r"""Raises :class:`ChecksumError` unless :obj:`path` is the pinned upstream
    ``<folder>/<file>`` (``file`` defaults to the base name of :obj:`path`)."""
    file = file or osp.basename(path)
    size, digest = sha256_file(path)
    _check(size, digest, folder, file, path)


def verify_raw_dir(raw_dir: str, folder: str, files: Optional[Iterable[str]] = None) -> None:
    r"""Verifies every pinned file of :obj:`folder` present in :obj:`raw_dir`."""
    for file in (files or CHECKSUMS[folder]):
        verify_file(osp.join(raw_dir, file), folder, file)


def base_url(url: Optional[str] = None) -> str:
    r"""The base URL in effect: :obj:`url`, else ``$MOMOK_PYG_URL``, else the pinned
    upstream URL."""
    return (url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _copy_hashing(src, dst: str) -> Tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(dst, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, h.hexdigest()


def _local_source(folder: str, file: str, raw_from: Optional[str]) -> Optional[str]:
    if raw_from is not None:
        path = osp.join(os.fspath(raw_from), file)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f"raw_from={os.fspath(raw_from)!r} has no {file!r}; expected the upstream "
                f"files {sorted(CHECKSUMS[folder])} of {folder} in that folder")
        return path
    env = os.environ.get(RAW_ENV)
    if env:
        path = osp.join(env, folder, file)
        if osp.isfile(path):
            return path
    return None


def fetch_raw_files(
    folder: str,
    raw_dir: str,
    files: Optional[Iterable[str]] = None,
    url: Optional[str] = None,
    raw_from: Optional[str] = None,
    timeout: float = 60.0,
    log: bool = True,
) -> List[str]:
    r"""Puts the verified upstream files of benchmark :obj:`folder` into :obj:`raw_dir`.

    Files already in :obj:`raw_dir` are verified and kept; the others are fetched from
    :obj:`raw_from`, ``$MOMOK_PYG_RAW`` or the network (see the module docstring), staged,
    verified and moved in all at once.

    Returns:
        The paths of all files in :obj:`raw_dir`.

    Raises:
        ChecksumError: a file does not match its pinned SHA-256 (nothing is left behind).
        RuntimeError: a download failed (with the URL and the reason).
    """
    files = list(files or CHECKSUMS[folder])
    os.makedirs(raw_dir, exist_ok=True)
    todo = []
    for file in files:
        dst = osp.join(raw_dir, file)
        if osp.isfile(dst):
            verify_file(dst, folder, file)
        else:
            todo.append(file)
    if todo:
        stage = tempfile.mkdtemp(prefix=".staging-", dir=raw_dir)
        try:
            staged: Dict[str, str] = {}
            for file in todo:
                tmp = osp.join(stage, file)
                local = _local_source(folder, file, raw_from)
                if local is not None:
                    if log:
                        print(f"Copying {local}", file=sys.stderr)
                    with open(local, "rb") as src:
                        size, digest = _copy_hashing(src, tmp)
                    origin = local
                else:
                    origin = f"{base_url(url)}/{folder}/{file}"
                    if log:
                        print(f"Downloading {origin}", file=sys.stderr)
                    try:
                        with urllib.request.urlopen(origin, timeout=timeout) as src:
                            size, digest = _copy_hashing(src, tmp)
                    except (urllib.error.URLError, OSError) as e:
                        raise RuntimeError(
                            f"{origin}: download failed ({e}). Place the upstream files in "
                            f"{raw_dir}, pass raw_from=<folder with the files>, set "
                            f"{RAW_ENV}=<folder with {folder}/> or {URL_ENV}=<mirror base "
                            f"URL>") from e
                _check(size, digest, folder, file, origin)
                staged[file] = tmp
            for file, tmp in staged.items():
                os.replace(tmp, osp.join(raw_dir, file))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return [osp.join(raw_dir, f) for f in files]
