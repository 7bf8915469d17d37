r"""Filtered ranking metrics for knowledge-graph completion.

Every query is a pair :math:`q = (h, r')` with :math:`r' \in [0, 2R)`; ids :math:`r' \ge R` are the
reciprocal relations, so the head query :math:`(?, r, t)` is asked as :math:`(t, r + R, ?)`.
For a query with target :math:`t` and scores :math:`s \in \mathbb{R}^N` (higher = better), let
:math:`\mathcal{A}(q)` be the known answers of :math:`q` (from train, valid and test) and
:math:`\mathcal{C}(q) = \{0..N-1\} \setminus (\mathcal{A}(q) \cup \{t\})` the candidates that
compete with the target. With

.. math::
    g = |\{e \in \mathcal{C}(q) : s_e > s_t\}|, \qquad
    u = |\{e \in \mathcal{C}(q) : s_e = s_t\}|

the filtered rank is :math:`1 + g` (``"optimistic"``), :math:`1 + g + u` (``"pessimistic"``) or
their mean :math:`1 + g + u / 2` (``"realistic"``, the default: the expected rank under a random
order of ties, which is what the upstream code estimates by random tie breaking). Over
:math:`Q` queries,

.. math::
    \mathrm{MRR} = \frac{1}{Q} \sum_q \frac{1}{\mathrm{rank}_q}, \quad
    \mathrm{MR} = \frac{1}{Q} \sum_q \mathrm{rank}_q, \quad
    \mathrm{Hits@}k = \frac{1}{Q} \sum_q [\mathrm{rank}_q \le k].
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

TIES = ("realistic", "optimistic", "pessimistic")
_CPU_BLOCK = 2**21  # score entries per block of rows ranked at once on CPU (8 MB float32)


class FilterIndex:
    r"""Known answers of every query :math:`(h, r')`, :math:`r' \in [0, 2R)`, as a CSR index.

    A triple :math:`(h, r, t)` makes :math:`t` an answer of :math:`(h, r)` and :math:`h` an
    answer of :math:`(t, r + R)`. Query keys :math:`h \cdot 2R + r'` are sorted and unique
    (:obj:`keys`); the answers of ``keys[i]`` are ``col[ptr[i]:ptr[i + 1]]`` (sorted, unique).
    Built once; looked up per batch with :func:`torch.searchsorted` (no Python loops).

    Args:
        triples (Tensor): ``[E, 3]`` ``(head, relation, tail)`` with *original* relation ids.
        num_entities (int): Number of entities :math:`N`.
        num_relations (int): Number of original relations :math:`R`.
    """
    def __init__(self, triples: Tensor, num_entities: int, num_relations: int) -> None:
        triples = torch.as_tensor(triples, dtype=torch.long)
        if triples.dim() != 2 or triples.size(1) != 3:
            raise ValueError(f"FilterIndex: expected triples of shape [E, 3], got "
                             f"{tuple(triples.shape)}")
        for col, bound, what in ((0, num_entities, "head"), (1, num_relations, "relation"),
                                 (2, num_entities, "tail")):
            bad = (triples[:, col] < 0) | (triples[:, col] >= bound)
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise ValueError(f"FilterIndex: triple {row} (0-based) has {what} id "
                                 f"{int(triples[row, col])}; expected an id in [0, {bound})")
        if num_entities**2 * 2 * num_relations >= 2**63:
            raise ValueError(f"FilterIndex: {num_entities} entities x {2 * num_relations} "
                             f"relations overflow the int64 pair codes")
        self.num_entities, self.num_relations = int(num_entities), int(num_relations)
        h, r, t = triples.unbind(1)
        query = torch.cat([h * 2 * num_relations + r, t * 2 * num_relations + r + num_relations])
        answer = torch.cat([t, h])
        # One sort of the pair codes orders by query key, then answer; unique drops duplicates.
        code = torch.unique(query * num_entities + answer)  # sorted
        keys, counts = torch.unique_consecutive(code // num_entities, return_counts=True)
        self.keys: Tensor = keys
        self.ptr: Tensor = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.col: Tensor = code % num_entities

    @classmethod
    def from_data(cls, data: HeteroData, splits: Sequence[str] = ("train", "valid", "test")
                  ) -> "FilterIndex":
        r"""Filter of all triples of :obj:`splits` of an MMKG :class:`HeteroData`; with no
        split (``splits=()``) no answer is known, so the ranks are the *raw* ones (every other
        entity competes with the target)."""
        from momok_pyg.datasets.schema import ENTITY, get_triples
        triples = (torch.cat([get_triples(data, s) for s in splits], dim=0) if splits else
                   torch.empty(0, 3, dtype=torch.long))
        return cls(triples, data[ENTITY].num_nodes, data.num_relations)

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def num_answers(self) -> int:
        r"""Number of (query, answer) pairs stored."""
        return int(self.col.numel())

    def to(self, device: Union[str, torch.device]) -> "FilterIndex":
        r"""Returns a copy with all index tensors on :obj:`device`."""
        out = object.__new__(FilterIndex)
        out.num_entities, out.num_relations = self.num_entities, self.num_relations
        out.keys, out.ptr, out.col = self.keys.to(device), self.ptr.to(device), self.col.to(device)
        return out

    def answers(self, head: Tensor, rel: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Known answers of a batch of queries, in COO form.

        Args:
            head (Tensor): ``[B]`` query entities.
            rel (Tensor): ``[B]`` relations in ``[0, 2R)``.

        Returns:
            ``(batch_idx, entity_idx)``: answer ``entity_idx[j]`` belongs to query
            ``batch_idx[j]``.
        """
        q = head.to(self.keys.device) * (2 * self.num_relations) + rel.to(self.keys.device)
        if self.keys.numel() == 0:
            return q.new_empty(0), q.new_empty(0)
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        found = self.keys[pos] == q
        start = self.ptr[pos]
        count = torch.where(found, self.ptr[pos + 1] - start, torch.zeros_like(start))
        batch_idx = torch.repeat_interleave(torch.arange(q.numel(), device=q.device), count)
        # Offset of each answer inside its query's slice: global position minus slice start.
        first = torch.cumsum(count, 0) - count
        offset = torch.arange(batch_idx.numel(), device=q.device) - first[batch_idx]
        return batch_idx, self.col[start[batch_idx] + offset]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_entities={self.num_entities}, "
                f"num_relations={self.num_relations}, queries={self.keys.numel()}, "
                f"answers={self.num_answers})")


def _tie_weight(x: Tensor, s_t: Tensor, tie: str, dtype: torch.dtype) -> Tensor:
    r"""Contribution of a competitor with score :obj:`x` to the rank of :obj:`s_t`:
    :math:`[x > s_t]` plus :math:`0`, :math:`1/2` or :math:`1` times :math:`[x = s_t]`."""
    if tie == "optimistic":
        return (x > s_t).to(dtype)
    if tie == "pessimistic":
        return (x >= s_t).to(dtype)
    return (x > s_t).to(dtype) + 0.5 * (x == s_t).to(dtype)


def _as_float(scores: Tensor) -> Tensor:
    r"""Scores in a dtype that can be compared and summed exactly (half precision cannot hold
    counts, integers cannot subtract)."""
    return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()


def _tie_row_sums(scores: Tensor, s_t: Tensor, row: Optional[Tensor], tie: str,
                  acc: torch.dtype, finite: bool) -> Tensor:
    r"""``[B]`` sums :math:`\sum_e w(s_e)` over the columns of :obj:`scores` (``[B, C]``, or
    ``[U, C]`` read through :obj:`row`) against the ``[B, 1]`` target scores :obj:`s_t`.

    For finite realistic scores it is one pass, :math:`\frac12 (C + \sum_e
    \mathrm{sgn}(s_e - s_t))`, a matrix-vector product. On CPU, blocks of rows keep the
    ``[rows, C]`` temporaries in cache (~4x faster than one pass)."""
    num_queries, cols = s_t.size(0), scores.size(1)
    ones = torch.ones(cols, dtype=acc, device=scores.device)
    rows = num_queries if scores.device.type != "cpu" else max(1, _CPU_BLOCK // max(cols, 1))
    totals = []
    buf = (scores.new_empty(min(rows, num_queries), cols)  # reused by every block
           if (tie == "realistic" and finite) or row is not None else None)
    for start in range(0, num_queries, rows):
        block_t = s_t[start:start + rows]
        if row is not None:  # the rows of this block's queries, gathered into the buffer
            block = torch.index_select(scores, 0, row[start:start + rows],
                                       out=buf[:block_t.size(0)])
        else:
            block = scores[start:start + rows]
        if tie == "realistic" and finite:
            sign = torch.sub(block, block_t, out=buf[:block.size(0)]).sign_()
            totals.append(0.5 * (cols + sign.to(acc) @ ones))
        else:
            totals.append(_tie_weight(block, block_t, tie, acc) @ ones)
    return torch.cat(totals) if totals else s_t.new_zeros(0, dtype=acc)


def filtered_ranks(scores: Tensor, target: Tensor, batch_idx: Tensor, entity_idx: Tensor,
                   tie: str = "realistic", row: Optional[Tensor] = None) -> Tensor:
    r"""Filtered ranks of :obj:`target` in each row of :obj:`scores` (see module docstring).

    The rank is :math:`1 + \sum_{e \in \mathcal{C}(q)} w(s_e)` with :math:`w(x) = [x > s_t] +
    \lambda [x = s_t]`, :math:`\lambda = 0, 1, \frac12` (optimistic, pessimistic, realistic).
    It is summed over the full row by comparison with :math:`s_t` (no sort), then the target
    and the filtered entries ``(batch_idx, entity_idx)`` are subtracted with one gather
    (an entry equal to the target is skipped, so the target never counts against itself).
    For finite realistic scores the row sum is one pass, :math:`\sum_e w(s_e) =
    \frac12 (N + \sum_e \mathrm{sgn}(s_e - s_t))`, a matrix-vector product; sums are exact
    (float32 while :math:`N < 2^{24}`).

    Queries that share their scores (the same :math:`(h, r')` asked with several targets) can
    share one row: :obj:`row` maps each target to its row of :obj:`scores`.

    Args:
        scores (Tensor): ``[B, N]`` scores, higher = better (no NaN; :math:`\pm\infty` allowed),
            or ``[U, N]`` with :obj:`row`.
        target (Tensor): ``[B]`` true entity of each query.
        batch_idx, entity_idx (Tensor): Filtered entries (e.g. from :meth:`FilterIndex.answers`);
            ``batch_idx`` indexes queries (targets), not rows.
        tie (str): ``"realistic"``, ``"optimistic"`` or ``"pessimistic"``.
        row (Tensor, optional): ``[B]`` row of :obj:`scores` of each query, in ``[0, U)``;
            default: query :math:`i` is row :math:`i`.

    Returns:
        Float ``[B]`` ranks (half-integers possible with ``"realistic"``), float64 for float64
        scores or :math:`N \ge 2^{24}`, else float32.
    """
    if tie not in TIES:
        raise ValueError(f"unknown tie mode {tie!r}; expected one of {TIES}")
    if row is None and (scores.dim() != 2 or target.dim() != 1
                        or target.numel() != scores.size(0)):
        raise ValueError(f"expected scores [B, N] and target [B], got {tuple(scores.shape)} and "
                         f"{tuple(target.shape)}")
    if row is not None and (scores.dim() != 2 or target.dim() != 1 or row.dim() != 1
                            or row.numel() != target.numel()):
        raise ValueError(f"expected scores [U, N], target [B] and row [B], got "
                         f"{tuple(scores.shape)}, {tuple(target.shape)} and {tuple(row.shape)}")
    num_entities = scores.size(1)
    acc = torch.float64 if scores.dtype == torch.float64 or num_entities >= 2**24 else torch.float32
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.to(acc)  # half precision cannot hold counts, ints cannot subtract
    finite = bool(torch.isfinite(scores.sum()))  # one cheap pass; False also for NaN
    if not finite and bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; a NaN score cannot be ranked (check the model)")

    target = target.to(scores.device)
    if row is None:
        row = torch.arange(scores.size(0), device=scores.device)
        shared = False
    else:
        row = row.to(scores.device)
        if row.numel() and bool(((row < 0) | (row >= scores.size(0))).any()):
            raise ValueError(f"row ids must lie in [0, {scores.size(0)}) (rows of scores)")
        shared = True
    s_t = scores[row, target].unsqueeze(1)
    total = _tie_row_sums(scores, s_t, row if shared else None, tie, acc, finite)
    s_t = s_t.squeeze(1)
    total = total - _tie_weight(s_t, s_t, tie, acc)  # the target itself

    batch_idx, entity_idx = batch_idx.to(scores.device), entity_idx.to(scores.device)
    keep = entity_idx != target[batch_idx]  # the target is never filtered away
    batch_idx, entity_idx = batch_idx[keep], entity_idx[keep]
    w_f = _tie_weight(scores[row[batch_idx], entity_idx], s_t[batch_idx], tie, acc)
    total = total.index_add(0, batch_idx, w_f, alpha=-1)
    return 1.0 + total


def rank_metrics(ranks: Tensor, ks: Iterable[int] = (1, 3, 10)) -> Dict[str, Union[float, int]]:
    r"""``{"mrr", "mr", "hits@k"..., "count"}`` of a rank vector (means in float64; ``nan`` if
    empty)."""
    r = ranks.detach().to("cpu", torch.float64)
    empty = r.numel() == 0
    out: Dict[str, Union[float, int]] = {
        "mrr": float("nan") if empty else float((1.0 / r).mean()),
        "mr": float("nan") if empty else float(r.mean()),
    }
    for k in ks:
        out[f"hits@{k}"] = float("nan") if empty else float((r <= k).to(torch.float64).mean())
    out["count"] = int(r.numel())
    return out


class FilteredRankMetric:
    r"""Filtered MRR / MR / Hits@k accumulated over batches of queries, shaped like
    :mod:`torch_geometric.metrics` (:meth:`update` per batch, :meth:`compute`, :meth:`reset`).

    .. code-block:: python

        metric = FilteredRankMetric(FilterIndex.from_data(data))
        for idx in torch.arange(head.numel()).split(1024):
            metric.update(model.predict(head[idx], rel[idx]), head[idx], rel[idx], target[idx])
        metric.compute()  # {"mrr": ..., "mr": ..., "hits@1": ..., "count": ...}

    Args:
        filter_index (FilterIndex): Known answers to filter out.
        ks (Sequence[int]): Cut-offs of Hits@k.
        tie (str): Tie handling, ``"realistic"`` (default), ``"optimistic"``, ``"pessimistic"``.
    """
    def __init__(self, filter_index: FilterIndex, ks: Sequence[int] = (1, 3, 10),
                 tie: str = "realistic") -> None:
        if tie not in TIES:
            raise ValueError(f"unknown tie mode {tie!r}; expected one of {TIES}")
        if any(int(k) <= 0 for k in ks):
            raise ValueError(f"Hits@k cut-offs must be positive integers, got {tuple(ks)}")
        self.filter_index = filter_index
        self.ks = tuple(int(k) for k in ks)
        self.tie = tie
        self._chunks: List[Tensor] = []

    def update(self, scores: Tensor, head: Tensor, rel: Tensor, target: Tensor,
               row: Optional[Tensor] = None) -> Tensor:
        r"""Ranks one batch and stores its ranks.

        Args:
            scores (Tensor): ``[B, N]`` scores of all :math:`N` entities, higher = better; or
                ``[U, N]`` scores of distinct queries with :obj:`row`.
            head (Tensor): ``[B]`` query entities.
            rel (Tensor): ``[B]`` relations in ``[0, 2R)`` (``r + R`` = reciprocal of ``r``).
            target (Tensor): ``[B]`` true answers.
            row (Tensor, optional): ``[B]`` row of :obj:`scores` that scores query :math:`i`
                (the caller vouches that it was scored for ``(head[i], rel[i])``); default:
                row :math:`i`.

        Returns:
            The ``[B]`` float ranks of this batch.
        """
        fi = self.filter_index
        if scores.dim() != 2 or scores.size(1) != fi.num_entities:
            raise ValueError(f"expected scores of shape [B, {fi.num_entities}] (one column per "
                             f"entity), got {tuple(scores.shape)}")
        rows = scores.size(0) if row is None else row.numel()
        if not (head.numel() == rel.numel() == target.numel() == rows):
            raise ValueError(f"batch sizes differ: {'scores' if row is None else 'row'} {rows}, "
                             f"head {head.numel()}, rel {rel.numel()}, target {target.numel()}")
        n, r2 = fi.num_entities, 2 * fi.num_relations
        if bool(((head < 0) | (head >= n) | (target < 0) | (target >= n) | (rel < 0)
                 | (rel >= r2)).any()):  # one check, one device sync
            raise ValueError(f"query ids out of range: head and target must lie in [0, {n}), "
                             f"rel in [0, {r2}) (r + {r2 // 2} = reciprocal of r)")
        if fi.device != scores.device:  # move once, keep the moved copy
            fi = self.filter_index = fi.to(scores.device)
        batch_idx, entity_idx = fi.answers(head.to(scores.device), rel.to(scores.device))
        ranks = filtered_ranks(scores, target, batch_idx, entity_idx, self.tie, row=row)
        self._chunks.append(ranks.detach())
        return ranks

    def update_chunked(self, score_chunk: Callable[[slice], Tensor], head: Tensor, rel: Tensor,
                       target: Tensor, row: Optional[Tensor] = None,
                       chunk_size: int = 65536) -> Tensor:
        r"""Ranks one batch whose scores come in column chunks, so that no ``[B, N]`` tensor
        is ever held: ``score_chunk(slice(c0, c1))`` returns the ``[B, c1 - c0]`` (or
        ``[U, c1 - c0]`` with :obj:`row`) scores of entities ``c0 .. c1 - 1``. Peak memory is
        bounded by the rows times :obj:`chunk_size`, whatever :math:`N`; every chunk but
        one is scored twice (once to read the targets' scores, once to count; the last chunk's
        scores are kept, so :math:`N \le` :obj:`chunk_size` costs one scoring). The row sums
        are the blocked pass of :func:`filtered_ranks`. The ranks equal those
        of :meth:`update` on the full score matrix (same tie rule, same filter).

        Returns:
            The ``[B]`` float ranks of this batch.
        """
        fi = self.filter_index
        n = fi.num_entities
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        bounds = [(c0, min(c0 + chunk_size, n)) for c0 in range(0, n, chunk_size)]
        rows = torch.arange(target.numel()) if row is None else row
        t_score: Optional[Tensor] = None
        last: Optional[Tensor] = None
        for c0, c1 in bounds:  # pass 1: the targets' own scores
            s = _as_float(score_chunk(slice(c0, c1)))
            if s.dim() != 2 or s.size(1) != c1 - c0:
                raise ValueError(f"score_chunk(slice({c0}, {c1})) must return [rows, "
                                 f"{c1 - c0}] scores, got {tuple(s.shape)}")
            if t_score is None:
                t_score = torch.full((target.numel(), ), float("nan"), dtype=s.dtype,
                                     device=s.device)
                rows, target = rows.to(s.device), target.to(s.device)
                row = None if row is None else rows
            hit = (target >= c0) & (target < c1)
            t_score[hit] = s[rows[hit], target[hit] - c0]
            last = s
        if fi.device != t_score.device:
            fi = self.filter_index = fi.to(t_score.device)
        batch_idx, entity_idx = fi.answers(head.to(t_score.device), rel.to(t_score.device))
        other = entity_idx != target[batch_idx]  # the target never counts against itself
        batch_idx, entity_idx = batch_idx[other], entity_idx[other]
        total = -_tie_weight(t_score, t_score, self.tie, torch.float64)  # the target itself
        # pass 2: the weighted count of better / equal candidates, filtered ones taken out;
        # the chunk scored last in pass 1 is counted first from its kept scores, so a single
        # chunk is scored once
        for i, (c0, c1) in enumerate([bounds[-1]] + bounds[:-1]):
            s = last if i == 0 else _as_float(score_chunk(slice(c0, c1)))
            last = None
            finite = bool(torch.isfinite(s.sum()))  # one cheap pass; False also for NaN
            if not finite and bool(torch.isnan(s).any()):
                raise ValueError("scores contain NaN")
            acc = torch.float64 if s.dtype == torch.float64 or c1 - c0 >= 2**24 \
                else torch.float32
            total += _tie_row_sums(s, t_score.unsqueeze(1), row, self.tie, acc,
                                   finite).double()
            sel = (entity_idx >= c0) & (entity_idx < c1)
            b, e = batch_idx[sel], entity_idx[sel] - c0
            total.index_add_(0, b, _tie_weight(s[rows[b], e], t_score[b], self.tie,
                                               torch.float64), alpha=-1)
        ranks = (1.0 + total).to(torch.float32 if n < 2**24 else torch.float64)
        self._chunks.append(ranks)
        return ranks

    @property
    def ranks(self) -> Tensor:
        r"""All ranks collected so far, in update order."""
        if not self._chunks:
            return torch.empty(0)
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0]

    def compute(self) -> Dict[str, Union[float, int]]:
        r"""``{"mrr", "mr", "hits@k"..., "count"}`` over all queries seen since :meth:`reset`."""
        return rank_metrics(self.ranks, self.ks)

    def reset(self) -> None:
        self._chunks = []

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(ks={self.ks}, tie={self.tie!r})"


def masked_filtered_ranks(scores: Tensor, target: Tensor, batch_idx: Tensor,
                          entity_idx: Tensor, tie: str = "realistic") -> Tensor:
    r"""Variant of :func:`filtered_ranks` that sets the filtered scores (but the target's) to
    :math:`-\infty` on a clone of :obj:`scores` and ranks that. Same ranks (unless a candidate
    itself scores :math:`-\infty`), but a full extra copy of the scores per batch: kept for the
    benchmark (the gather correction of :func:`filtered_ranks` is faster) and as a cross-check.
    """
    arange = torch.arange(scores.size(0), device=scores.device)
    s_t = scores[arange, target]
    masked = scores.index_put((batch_idx, entity_idx), scores.new_tensor(float("-inf")))
    masked[arange, target] = s_t
    none = batch_idx.new_empty(0)
    return filtered_ranks(masked, target, none, none, tie)
