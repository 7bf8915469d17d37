r"""The one parser for MMKG text files (benchmarks and custom graphs alike).

Two upstream formats are read (zjukg/MoMoK ``datasets/<name>/``):

* **id files** ``entity2id.txt`` / ``relation2id.txt``: one ``name<sep>id`` per line.
  ``<sep>`` is a tab if the line holds one (Kuai16K), otherwise the *last* run of
  whitespace (the other benchmarks use one space), so a name may itself contain spaces.
  Names must be unique and the ids must be exactly :math:`0, \dots, n-1` (any order).
* **triple files** ``train.txt`` / ``valid.txt`` / ``test.txt``: one
  ``head relation tail .`` per line, given by *names*. Fields are split on tabs if the line
  holds one, otherwise on whitespace runs. The trailing ``"."`` is **tolerated, not
  required**: ``head relation tail`` (3 fields) and ``head relation tail .`` (4 fields, last
  one ``"."``) are both accepted; anything else is an error.

All files are UTF-8 (a leading BOM is ignored; ``\r\n`` line ends are accepted); blank lines
are skipped. Every problem raises :class:`~momok_pyg.datasets.schema.MMKGFormatError` naming
the file, the 1-based line and what was expected.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import Tensor

from .schema import MMKGFormatError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "read_lines", "read_id_file", "read_triple_names", "read_triples", "infer_ids",
    "names_to_ids", "index_of",
]


def read_lines(path: PathLike) -> List[Tuple[int, str]]:
    r"""Reads a UTF-8 text file and returns its non-blank lines as ``(lineno, text)``
    (``lineno`` 1-based, ``\r``/``\n`` stripped).

    Raises:
        MMKGFormatError: if the file is missing or not valid UTF-8 (the message names the
            line and byte offset of the first bad byte).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MMKGFormatError(f"{path}: file not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise MMKGFormatError(
            f"{path}, line {line}: byte {raw[e.start:e.start + 1]!r} at column {col} is not "
            f"valid UTF-8; expected a UTF-8 encoded text file") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    out = []
    # str.splitlines() would also split on \x1c, \u2028, ...: only \n ends a line here.
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            out.append((i, line))
    return out


def read_id_file(path: PathLike, kind: str = "entity") -> List[str]:
    r"""Reads a ``name<sep>id`` file and returns the names ordered by id.

    Args:
        path (str): The file (e.g. ``entity2id.txt``).
        kind (str): ``"entity"`` or ``"relation"`` (only used in messages).

    Raises:
        MMKGFormatError: on a line without separator, a non-integer id, a duplicate name or
            id, ids that are not exactly :math:`0..n-1`, or an empty file.
    """
    path = os.fspath(path)
    by_id: Dict[int, Tuple[str, int]] = {}
    by_name: Dict[str, int] = {}
    for lineno, line in read_lines(path):
        if "\t" in line:
            parts = line.rsplit("\t", 1)
        else:
            parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip():
            raise MMKGFormatError(
                f"{path}, line {lineno}: expected '<{kind} name><space or tab><integer id>', "
                f"got {line!r}")
        name, sid = parts[0].strip(), parts[1].strip()
        try:
            idx = int(sid)
        except ValueError:
            raise MMKGFormatError(
                f"{path}, line {lineno}: expected an integer {kind} id after the name, got "
                f"{sid!r}") from None
        if idx < 0:
            raise MMKGFormatError(
                f"{path}, line {lineno}: expected a non-negative {kind} id, got {idx}")
        if name in by_name:
            raise MMKGFormatError(
                f"{path}, line {lineno}: duplicate {kind} name {name!r} (first on line "
                f"{by_name[name]}); expected each name once")
        if idx in by_id:
            raise MMKGFormatError(
                f"{path}, line {lineno}: duplicate {kind} id {idx} (also given to "
                f"{by_id[idx][0]!r} on line {by_id[idx][1]}); expected each id once")
        by_name[name] = lineno
        by_id[idx] = (name, lineno)
    n = len(by_id)
    if n == 0:
        raise MMKGFormatError(f"{path}: no {kind}s; expected at least one '<name> <id>' line")
    if max(by_id) != n - 1:
        missing = next(i for i in range(n) if i not in by_id)
        name, lineno = by_id[max(by_id)]
        raise MMKGFormatError(
            f"{path}, line {lineno}: {kind} id {max(by_id)} is out of range; expected the "
            f"{n} ids to be exactly 0..{n - 1} (id {missing} is missing)")
    return [by_id[i][0] for i in range(n)]


def read_triple_names(path: PathLike) -> List[Tuple[int, str, str, str]]:
    r"""Reads a triple file and returns ``(lineno, head, relation, tail)`` name tuples.

    Raises:
        MMKGFormatError: on a line with a wrong number of fields, or if the file holds no
            triple at all (an empty split).
    """
    path = os.fspath(path)
    out = []
    for lineno, line in read_lines(path):
        fields = ([f.strip() for f in line.split("\t")] if "\t" in line else line.split())
        if len(fields) == 4 and fields[3] == ".":
            fields = fields[:3]
        if len(fields) != 3 or not all(fields):
            raise MMKGFormatError(
                f"{path}, line {lineno}: expected 'head relation tail' or 'head relation tail "
                f".' (3 names, optional trailing '.'), got {len(fields)} fields in {line!r}")
        out.append((lineno, fields[0], fields[1], fields[2]))
    if not out:
        raise MMKGFormatError(f"{path}: the split is empty; expected at least one triple")
    return out


def names_to_ids(
    path: PathLike,
    rows: Sequence[Tuple[int, str, str, str]],
    entity2id: Mapping[str, int],
    relation2id: Mapping[str, int],
    entity_source: str = "entity2id.txt",
    relation_source: str = "relation2id.txt",
) -> Tensor:
    r"""Maps name triples (from :func:`read_triple_names`) to a ``[E, 3]`` long tensor.

    Raises:
        MMKGFormatError: naming the file and line of the first unknown entity or relation.
    """
    path = os.fspath(path)
    out = torch.empty(len(rows), 3, dtype=torch.long)
    buf = out.numpy()
    try:
        for i, (_, h, r, t) in enumerate(rows):
            buf[i, 0] = entity2id[h]
            buf[i, 1] = relation2id[r]
            buf[i, 2] = entity2id[t]
    except KeyError:
        lineno, h, r, t = rows[i]
        for what, name, table, src in (("head entity", h, entity2id, entity_source),
                                       ("relation", r, relation2id, relation_source),
                                       ("tail entity", t, entity2id, entity_source)):
            if name not in table:
                raise MMKGFormatError(
                    f"{path}, line {lineno}: unknown {what} {name!r}; expected a name listed "
                    f"in {src}") from None
        raise  # pragma: no cover
    return out


def read_triples(path: PathLike, entity2id: Mapping[str, int],
                 relation2id: Mapping[str, int], entity_source: str = "entity2id.txt",
                 relation_source: str = "relation2id.txt") -> Tensor:
    r"""Reads a triple file of names into a ``[E, 3]`` long tensor of
    ``(head, relation, tail)`` ids (see :func:`read_triple_names`, :func:`names_to_ids`)."""
    return names_to_ids(path, read_triple_names(path), entity2id, relation2id,
                        entity_source, relation_source)


def infer_ids(
    splits: Iterable[Sequence[Tuple[int, str, str, str]]],
    order: str = "first_seen",
) -> Tuple[List[str], List[str]]:
    r"""Infers entity and relation name lists from name triples when no id file is given.

    Args:
        splits: Name triples of each split, in the order they should be scanned
            (train, valid, test).
        order (str): ``"first_seen"`` (ids in order of first appearance, heads before tails
            within a triple) or ``"sorted"`` (names sorted by code point).
    """
    if order not in ("first_seen", "sorted"):
        raise ValueError(f"unknown id order {order!r}; expected 'first_seen' or 'sorted'")
    ents: Dict[str, None] = {}
    rels: Dict[str, None] = {}
    for rows in splits:
        for _, h, r, t in rows:
            ents.setdefault(h)
            rels.setdefault(r)
            ents.setdefault(t)
    e, r = list(ents), list(rels)
    if order == "sorted":
        e.sort()
        r.sort()
    return e, r


def index_of(names: Sequence[str]) -> Dict[str, int]:
    r"""``{name: position}`` for a list of unique names."""
    return {n: i for i, n in enumerate(names)}

