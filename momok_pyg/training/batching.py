r"""1-N training queries with reciprocal relations.

Every training triple :math:`(h, r, t)` yields two *queries*: the tail query :math:`(h, r)`
with answer :math:`t`, and the reciprocal query :math:`(t, r + R)` with answer :math:`h`
(head prediction of :math:`(?, r, t)` is tail prediction of :math:`(t, r^{-1}, ?)`).
The training set of a 1-N model is the set of *distinct* queries

.. math::
    \mathcal{Q} = \{(h, r) : (h, r, t) \in \mathcal{T}\} \cup
    \{(t, r + R) : (h, r, t) \in \mathcal{T}\},

each with a multi-hot target :math:`\mathbf{y}_q \in \{0, 1\}^N` over all :math:`N` entities
(:math:`y_{q,e} = 1` iff :math:`e` answers :math:`q` in the training graph). The answers are
stored once in CSR form (``rowptr``/``col``); a batch's target is a sparse ``[B, N]`` COO
tensor of its answers (:meth:`OneToNQueries.sparse_target`, what the trainer feeds the loss)
or, on request, a dense one.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor


def sample_candidates(answers: Tensor, num_entities: int, num_negatives: int,
                      generator: Optional[torch.Generator] = None
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The candidate set of one batch in sampled-candidate training, shared by its queries.

    The candidates are the union :math:`A` of the batch's answers and :math:`k` entities
    drawn uniformly *without replacement* from all :math:`N`. An entity outside :math:`A` is
    a candidate with probability :math:`k / N`, one in :math:`A` always, so the softmax over
    the candidates with the logits of sampled entities shifted by :math:`\log(N / k)`,

    .. math::
        \tilde{s}_e = s_e + [e \notin A] \log\frac{N}{k},

    estimates the full softmax's normaliser without bias (each sampled term stands for
    :math:`N / k` entities: the usual log-Q correction of sampled softmax for a uniform
    proposal). With :math:`k \ge N` every entity is a candidate and no shift is applied.

    Returns:
        ``(candidates [C], logit_shift [C], position [len(answers)])``: the sorted candidate
        ids, the shift of each, and the column of each answer among the candidates.
    """
    if num_negatives <= 0:
        raise ValueError(f"num_negatives must be positive, got {num_negatives}")
    union = torch.unique(answers)
    if num_negatives >= num_entities:
        cand = torch.arange(num_entities)
        shift = torch.zeros(num_entities)
    else:
        drawn = torch.randperm(num_entities, generator=generator)[:num_negatives]
        cand = torch.unique(torch.cat([union, drawn]))
        shift = torch.where(torch.isin(cand, union), 0.0,
                            math.log(num_entities / num_negatives))
    return cand, shift, torch.searchsorted(cand, answers)


class OneToNQueries:
    r"""Distinct training queries :math:`(e, r')`, :math:`r' \in [0, 2R)`, and their answers.

    Args:
        triples (Tensor): ``[E, 3]`` long tensor of training ``(head, relation, tail)``.
        num_entities (int): Number of entities :math:`N`.
        num_relations (int): Number of *original* relations :math:`R`.
        reciprocal (bool): Add the reciprocal queries :math:`(t, r + R)`. (default: ``True``)

    Attributes:
        entity (Tensor): ``[Q]`` query entity.
        relation (Tensor): ``[Q]`` query relation in ``[0, 2R)``.
        rowptr (Tensor): ``[Q + 1]`` CSR offsets into :obj:`col`.
        col (Tensor): answers of all queries, sorted per query, without duplicates.
    """
    def __init__(self, triples: Tensor, num_entities: int, num_relations: int,
                 reciprocal: bool = True) -> None:
        triples = torch.as_tensor(triples, dtype=torch.long)
        if triples.dim() != 2 or triples.size(1) != 3:
            raise ValueError(f"expected [E, 3] (head, relation, tail) triples, got shape "
                             f"{tuple(triples.shape)}")
        self.num_entities = int(num_entities)
        self.num_relations = int(num_relations)
        h, r, t = triples.unbind(1)
        if reciprocal:
            h, r, t = torch.cat([h, t]), torch.cat([r, r + num_relations]), torch.cat([t, h])
        num_rel_total = 2 * num_relations
        key = h * num_rel_total + r
        query_key, query_of = torch.unique(key, sorted=True, return_inverse=True)
        # Unique (query, answer) pairs, sorted by query then answer (duplicate triples collapse).
        pair = torch.unique(query_of * self.num_entities + t, sorted=True)
        row, col = pair // self.num_entities, pair % self.num_entities
        counts = torch.bincount(row, minlength=query_key.numel())
        self.entity = query_key // num_rel_total
        self.relation = query_key % num_rel_total
        self.rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.col = col
        self._key = query_key

    def __len__(self) -> int:
        return int(self.entity.numel())

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def answers(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""For query ids :obj:`index` ``[B]`` returns ``(batch_row, entity)`` COO pairs of
        all their answers (``batch_row`` indexes into :obj:`index`)."""
        start, end = self.rowptr[index], self.rowptr[index + 1]
        counts = end - start
        row = torch.repeat_interleave(torch.arange(index.numel()), counts)
        offset = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts)
        return row, self.col[start[row] + offset]

    def target(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""Dense multi-hot ``[B, N]`` target of the queries :obj:`index`."""
        y = torch.zeros(index.numel(), self.num_entities, dtype=dtype)
        row, col = self.answers(index)
        y[row, col] = 1
        return y

    def sparse_target(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""The multi-hot target of the queries :obj:`index` as a coalesced sparse COO
        ``[B, N]`` tensor (its answers only; :func:`momok_pyg.nn.one_to_n_loss` reads it
        without densifying)."""
        row, col = self.answers(index)
        return torch.sparse_coo_tensor(torch.stack([row, col]),
                                       torch.ones(row.numel(), dtype=dtype),
                                       (index.numel(), self.num_entities), is_coalesced=True,
                                       check_invariants=False)  # sorted, unique by construction

    def sampled_target(self, index: Tensor, num_negatives: int,
                       generator: Optional[torch.Generator] = None
                       ) -> Tuple[Tensor, Tensor, Tensor]:
        r"""``(candidates [C], target [B, C] sparse, logit_shift [C])`` of the queries
        :obj:`index` for sampled-candidate training (:func:`sample_candidates`)."""
        row, col = self.answers(index)
        cand, shift, pos = sample_candidates(col, self.num_entities, num_negatives, generator)
        target = torch.sparse_coo_tensor(torch.stack([row, pos]), torch.ones(row.numel()),
                                         (index.numel(), cand.numel()),
                                         check_invariants=False).coalesce()
        return cand, target, shift

    def lookup(self, entity: Tensor, relation: Tensor) -> Tensor:
        r"""Query ids of ``(entity, relation)`` pairs, ``-1`` where the pair is no training
        query (no known answer)."""
        key = entity * (2 * self.num_relations) + relation
        pos = torch.searchsorted(self._key, key).clamp(max=max(len(self) - 1, 0))
        found = self._key[pos] == key if len(self) > 0 else torch.zeros_like(key, dtype=torch.bool)
        return torch.where(found, pos, torch.full_like(pos, -1))

    def known_mask(self, entity: Tensor, relation: Tensor) -> Tensor:
        r"""Bool ``[B, N]``: ``True`` where ``(entity, relation, e)`` is a training fact."""
        q = self.lookup(entity, relation)
        mask = torch.zeros(q.numel(), self.num_entities, dtype=torch.bool)
        has = (q >= 0).nonzero().view(-1)
        if has.numel() > 0:
            row, col = self.answers(q[has])
            mask[has[row], col] = True
        return mask

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None,
                shuffle: bool = True) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        r"""Yields ``(entity, relation, query_index)`` batches of size :obj:`batch_size`
        (the last may be smaller), in an order drawn from :obj:`generator`."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = (torch.randperm(len(self), generator=generator) if shuffle else
                 torch.arange(len(self)))
        for idx in order.split(batch_size):
            yield self.entity[idx], self.relation[idx], idx


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    r"""The shuffling generator of one epoch, a pure function of ``(seed, epoch)`` so that
    a resumed run draws the same batch order as an uninterrupted one."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1))
    return g
