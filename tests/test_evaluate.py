"""Filtered link-prediction metrics vs brute-force references (Python loops) and ogb."""
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from momok_pyg.datasets.schema import build_mmkg, get_triples
from momok_pyg.evaluate import (
    distinct_queries,
    evaluate_link_prediction,
    query_tensors,
    unseen_entity_mask,
)
from momok_pyg.metrics import FilteredRankMetric, FilterIndex, filtered_ranks, masked_filtered_ranks

MMKG = Path(__file__).resolve().parents[1].parent / "shared" / "mmkg"
N, R = 40, 3


def random_triples(gen, num, n=N, r=R):
    return torch.stack([torch.randint(0, n, (num, ), generator=gen),
                        torch.randint(0, r, (num, ), generator=gen),
                        torch.randint(0, n, (num, ), generator=gen)], dim=1)


def brute_answers(triples, r=R):
    ans = defaultdict(set)
    for h, rel, t in triples.tolist():
        ans[(h, rel)].add(t)
        ans[(t, rel + r)].add(h)
    return ans


def brute_rank(row, target, known, tie):
    """Rank by definition: count the competitors one by one."""
    greater = equal = 0
    for e, s in enumerate(row):
        if e == target or e in known:
            continue
        greater += s > row[target]
        equal += s == row[target]
    return {"optimistic": 1 + greater, "pessimistic": 1 + greater + equal,
            "realistic": 1 + greater + equal / 2}[tie]


def tie_scores(gen, b, n=N, levels=4):
    # few distinct integer values -> many ties
    return torch.randint(0, levels, (b, n), generator=gen).float()


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(0)
    splits = {"train": random_triples(gen, 150), "valid": random_triples(gen, 30),
              "test": random_triples(gen, 30)}
    splits["train"] = torch.cat([splits["train"], splits["train"][:5]])  # duplicates
    splits["train"] = splits["train"][splits["train"][:, 0] != 7]  # entity 7 unseen in train...
    splits["train"] = splits["train"][splits["train"][:, 2] != 7]
    splits["test"][0, 0] = 7  # ...but present in test
    return build_mmkg(N, R, splits, relation_names=["a", "b", "c"], name="toy")


def test_filter_index_answers_match_dict(toy):
    all_triples = torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")])
    fi = FilterIndex.from_data(toy)
    ref = brute_answers(all_triples)
    assert fi.num_answers == sum(len(v) for v in ref.values())
    head = torch.arange(N).repeat_interleave(2 * R)
    rel = torch.arange(2 * R).repeat(N)
    b, e = fi.answers(head, rel)
    got = defaultdict(set)
    for bi, ei in zip(b.tolist(), e.tolist()):
        got[(head[bi].item(), rel[bi].item())].add(ei)
    assert got == {k: v for k, v in ref.items() if v}


@pytest.mark.parametrize("tie", ["realistic", "optimistic", "pessimistic"])
@pytest.mark.parametrize("splits", [("train", "valid", "test"), ("train", ), ()])
@pytest.mark.parametrize("block_rows", [None, 5])
def test_ranks_match_bruteforce_with_ties(toy, tie, splits, block_rows, monkeypatch):
    if block_rows is not None:  # rank in blocks of 5 rows (one reused buffer, a short last block)
        monkeypatch.setattr("momok_pyg.metrics._CPU_BLOCK", block_rows * N)
    gen = torch.Generator().manual_seed(1)
    # ("train",): targets mostly not in the filter; (): nothing filtered, the raw ranks
    fi = FilterIndex.from_data(toy, splits)
    ref = brute_answers(torch.cat([get_triples(toy, s) for s in splits]) if splits else
                        torch.empty(0, 3, dtype=torch.long))
    assert (fi.num_answers == 0) == (not splits)
    head, rel, target, _ = query_tensors(get_triples(toy, "test"), R)
    metric = FilteredRankMetric(fi, tie=tie)
    expected = []
    for idx in torch.arange(head.numel()).split(17):  # uneven batches
        scores = tie_scores(gen, idx.numel())
        metric.update(scores, head[idx], rel[idx], target[idx])
        for row, h, r, t in zip(scores.tolist(), head[idx].tolist(), rel[idx].tolist(),
                                target[idx].tolist()):
            expected.append(brute_rank(row, t, ref[(h, r)], tie))
    assert metric.ranks.tolist() == expected
    out = metric.compute()
    assert out["count"] == len(expected) == 60
    assert out["mrr"] == pytest.approx(sum(1 / x for x in expected) / len(expected))
    assert out["mr"] == pytest.approx(sum(expected) / len(expected))
    for k in (1, 3, 10):
        assert out[f"hits@{k}"] == pytest.approx(sum(x <= k for x in expected) / len(expected))
    metric.reset()
    assert metric.compute()["count"] == 0


def test_realistic_is_mean_of_optimistic_and_pessimistic_and_mask_variant_agrees(toy):
    gen = torch.Generator().manual_seed(2)
    fi = FilterIndex.from_data(toy)
    head, rel, target, _ = query_tensors(get_triples(toy, "test"), R)
    scores = tie_scores(gen, head.numel(), levels=3)
    b, e = fi.answers(head, rel)
    ranks = {t: filtered_ranks(scores, target, b, e, t) for t in ("realistic", "optimistic",
                                                                  "pessimistic")}
    assert torch.equal(ranks["realistic"], (ranks["optimistic"] + ranks["pessimistic"]) / 2)
    assert bool((ranks["optimistic"] < ranks["pessimistic"]).any())  # ties do occur
    for t, r in ranks.items():
        assert torch.equal(r, masked_filtered_ranks(scores, target, b, e, t))


@pytest.mark.parametrize("tie", ["realistic", "optimistic", "pessimistic"])
def test_infinite_and_half_precision_scores(toy, tie):
    gen = torch.Generator().manual_seed(6)
    fi = FilterIndex.from_data(toy)
    ref = brute_answers(torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")]))
    head, rel, target, _ = query_tensors(get_triples(toy, "test"), R)
    values = torch.tensor([float("-inf"), -1.0, 0.0, 2.5, float("inf")])
    scores = values[torch.randint(0, 5, (head.numel(), N), generator=gen)]
    for s in (scores, torch.randint(0, 4, scores.shape, generator=gen).half()):
        b, e = fi.answers(head, rel)
        expected = [brute_rank(row, t, ref[(h, r)], tie) for row, h, r, t in
                    zip(s.float().tolist(), head.tolist(), rel.tolist(), target.tolist())]
        assert filtered_ranks(s, target, b, e, tie).tolist() == expected


@pytest.mark.parametrize("tie", ["realistic", "optimistic", "pessimistic"])
@pytest.mark.parametrize("block_rows", [None, 5])
def test_shared_score_rows_rank_like_one_row_per_query(toy, tie, block_rows, monkeypatch):
    """`row` maps queries to shared score rows: same ranks as the rows copied out per query,
    finite or not, in one pass or in blocks."""
    if block_rows is not None:
        monkeypatch.setattr("momok_pyg.metrics._CPU_BLOCK", block_rows * N)
    gen = torch.Generator().manual_seed(7)
    fi = FilterIndex.from_data(toy)
    head, rel, target, _ = query_tensors(get_triples(toy, "test"), R)
    row = torch.randint(0, 9, (head.numel(), ), generator=gen)  # 60 queries on 9 rows
    values = torch.tensor([float("-inf"), -1.0, 0.0, 2.5, float("inf")])
    b, e = fi.answers(head, rel)
    for shared in (tie_scores(gen, 9), values[torch.randint(0, 5, (9, N), generator=gen)]):
        expected = filtered_ranks(shared[row], target, b, e, tie)
        assert torch.equal(filtered_ranks(shared, target, b, e, tie, row=row), expected)
        metric = FilteredRankMetric(fi, tie=tie)
        assert torch.equal(metric.update(shared, head, rel, target, row=row), expected)
    with pytest.raises(ValueError, match=r"row ids must lie in \[0, 9\)"):
        filtered_ranks(shared, target, b, e, tie, row=row + 1)
    with pytest.raises(ValueError, match="batch sizes differ: row 59"):
        FilteredRankMetric(fi).update(shared, head, rel, target, row=row[1:])


def test_evaluation_scores_each_distinct_query_once():
    """Test triples sharing (h, r) or (t, r^-1): one score row per distinct query, ranks in
    the order of query_tensors equal to brute force."""
    gen = torch.Generator().manual_seed(8)
    test = torch.tensor([[1, 0, 2], [1, 0, 3], [1, 0, 4], [5, 1, 2], [6, 1, 2], [1, 2, 2],
                         [7, 0, 2], [1, 0, 9]])
    splits = {"train": random_triples(gen, 100), "valid": random_triples(gen, 10), "test": test}
    data = build_mmkg(N, R, splits)
    table = tie_scores(gen, N * 2 * R).view(N, 2 * R, N)
    asked = []

    def score_fn(head, rel):
        asked.extend(zip(head.tolist(), rel.tolist()))
        return table[head, rel]

    out = evaluate_link_prediction(score_fn, data, batch_size=3, breakdowns=False,
                                   return_ranks=True)
    head, rel, target, _ = query_tensors(test, R)
    pairs = list(zip(head.tolist(), rel.tolist()))
    assert sorted(asked) == sorted(set(pairs)) and len(asked) == 11 < len(pairs) == 16
    assert [r for _, r in asked] == sorted(r for _, r in asked)  # batches follow relations
    ref = brute_answers(torch.cat(list(splits.values())))
    expected = [brute_rank(table[h, r].tolist(), t, ref[(h, r)], "realistic")
                for (h, r), t in zip(pairs, target.tolist())]
    assert out["ranks"].tolist() == expected
    h_u, r_u, inverse = distinct_queries(head, rel, N)
    assert torch.equal(h_u[inverse], head) and torch.equal(r_u[inverse], rel)


def test_matches_ogb_evaluator(toy):
    from ogb.linkproppred import Evaluator
    gen = torch.Generator().manual_seed(3)
    fi = FilterIndex.from_data(toy)
    ref = brute_answers(torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")]))
    head, rel, target, _ = query_tensors(get_triples(toy, "test"), R)
    scores = tie_scores(gen, head.numel())
    ranks = FilteredRankMetric(fi).update(scores, head, rel, target)
    # ogb ranks y_pred_pos against the negatives y_pred_neg: the candidates (not filtered,
    # not the target), padded with -inf, which never beats nor ties a finite positive.
    neg = torch.full((head.numel(), N), float("-inf"))
    for i, (h, r, t) in enumerate(zip(head.tolist(), rel.tolist(), target.tolist())):
        cand = [e for e in range(N) if e != t and e not in ref[(h, r)]]
        neg[i, :len(cand)] = scores[i, cand]
    pos = scores[torch.arange(head.numel()), target]
    res = Evaluator("ogbl-wikikg2").eval({"y_pred_pos": pos, "y_pred_neg": neg})
    assert torch.allclose(res["mrr_list"], 1.0 / ranks)
    for k in (1, 3, 10):
        assert torch.equal(res[f"hits@{k}_list"], (ranks <= k).float())


def test_evaluate_link_prediction_end_to_end(toy):
    gen = torch.Generator().manual_seed(4)
    table = tie_scores(gen, N * 2 * R).view(N, 2 * R, N)  # fixed score of every query

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.modes = []

        def predict(self, head, rel):
            self.modes.append(self.training)
            return table[head, rel] + self.w

    model = Toy().train()
    out = evaluate_link_prediction(model.predict, toy, batch_size=13, return_ranks=True)
    assert model.training and model.modes and not any(model.modes)  # eval() during, restored

    test = get_triples(toy, "test")
    ref = brute_answers(torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")]))
    tail = [brute_rank(table[h, r].tolist(), t, ref[(h, r)], "realistic")
            for h, r, t in test.tolist()]
    head = [brute_rank(table[t, r + R].tolist(), h, ref[(t, r + R)], "realistic")
            for h, r, t in test.tolist()]
    assert out["ranks"].tolist() == tail + head
    assert out["count"] == 2 * len(test)
    assert out["mrr"] == pytest.approx(sum(1 / x for x in tail + head) / (2 * len(test)))
    assert out["tail"]["mr"] == pytest.approx(sum(tail) / len(tail))
    assert out["head"]["mr"] == pytest.approx(sum(head) / len(head))
    for name, rid in (("a", 0), ("b", 1), ("c", 2)):
        sel = [x for x, tr in zip(tail + head, test.tolist() * 2) if tr[1] == rid]
        assert out["per_relation"][name]["relation_id"] == rid
        assert out["per_relation"][name]["count"] == len(sel)
        assert out["per_relation"][name]["mr"] == pytest.approx(sum(sel) / len(sel))
    seen = set(get_triples(toy, "train")[:, [0, 2]].flatten().tolist())
    unseen = [x for x, tr in zip(tail + head, test.tolist() * 2)
              if tr[0] not in seen or tr[2] not in seen]
    assert out["unseen_entity"]["count"] == len(unseen) >= 2
    assert out["unseen_entity"]["mr"] == pytest.approx(sum(unseen) / len(unseen))


def test_oracle_scores_rank_first_only_thanks_to_filter(toy):
    """All known answers scored equally high: filtered rank 1 everywhere, raw rank would not."""
    all_triples = torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")])
    fi = FilterIndex.from_data(toy)

    def oracle(head, rel):
        s = torch.zeros(head.numel(), N)
        b, e = fi.answers(head, rel)
        s[b, e] = 1.0
        return s

    out = evaluate_link_prediction(oracle, toy, breakdowns=False)
    assert out["mrr"] == 1.0 and out["hits@1"] == 1.0 and out["count"] == 60
    raw = evaluate_link_prediction(oracle, toy, filter_index=FilterIndex(all_triples[:0], N, R))
    assert raw["mr"] > 1.0  # without a filter the other true answers tie with the target


def test_bad_inputs_raise(toy):
    fi = FilterIndex.from_data(toy)
    metric = FilteredRankMetric(fi)
    h, r, t = torch.tensor([0]), torch.tensor([0]), torch.tensor([1])
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, N), float("nan")), h, r, t)
    with pytest.raises(ValueError, match=rf"\[B, {N}\]"):
        metric.update(torch.zeros(1, N + 1), h, r, t)
    with pytest.raises(ValueError, match=r"rel in \[0, 6\)"):
        metric.update(torch.zeros(1, N), h, torch.tensor([2 * R]), t)
    with pytest.raises(ValueError, match="tie"):
        FilteredRankMetric(fi, tie="average")
    with pytest.raises(ValueError, match=r"relation id 3; expected an id in \[0, 3\)"):
        FilterIndex(torch.tensor([[0, 3, 1]]), N, R)
    with pytest.raises(KeyError, match="unknown split"):
        evaluate_link_prediction(lambda a, b: torch.zeros(a.numel(), N), toy, split="val")


@pytest.mark.skipif(not (MMKG / "MKG-Y").is_dir(), reason=f"raw MMKG benchmarks absent: {MMKG}")
def test_mkgy_counts_and_unseen_subset():
    root = MMKG / "MKG-Y"

    def ids(name):
        return {k: int(v) for k, v in (ln.rsplit(" ", 1) for ln in
                                       (root / name).read_text().splitlines())}

    ent, rel = ids("entity2id.txt"), ids("relation2id.txt")
    def triples(split):
        lines = (root / f"{split}.txt").read_text().splitlines()
        return torch.tensor([[ent[a], rel[b], ent[c]] for a, b, c, _ in map(str.split, lines)])

    splits = {s: triples(s) for s in ("train", "valid", "test")}
    data = build_mmkg(len(ent), len(rel), splits, name="MKG-Y")
    assert int(unseen_entity_mask(data, "test").sum()) == 388  # documented in shared/README
    gen = torch.Generator().manual_seed(5)
    out = evaluate_link_prediction(
        lambda h, r: torch.rand(h.numel(), len(ent), generator=gen), data, batch_size=2048)
    assert out["count"] == 2 * 2663 and out["unseen_entity"]["count"] == 2 * 388
    assert out["mr"] == pytest.approx(len(ent) / 2, rel=0.05)  # random scores: rank ~ N/2


@pytest.mark.parametrize("tie", ["realistic", "optimistic", "pessimistic"])
@pytest.mark.parametrize("chunk", [1, 7, N])
def test_chunked_candidates_rank_like_the_definition(toy, tie, chunk):
    # ties everywhere, +-inf scores, chunks that split rows anywhere: the chunked ranks are
    # the brute-force ranks, and no scored chunk is wider than the chunk size
    gen = torch.Generator().manual_seed(5)
    table = tie_scores(gen, N * 2 * R).view(N, 2 * R, N)
    table[0, 0, 3], table[1, 1, 4] = float("inf"), float("-inf")
    widths = []

    def score_fn(head, rel, candidates=None):
        s = table[head, rel]
        if candidates is not None:
            s = s[:, candidates]
            widths.append(s.size(1))
        return s

    out = evaluate_link_prediction(score_fn, toy, batch_size=9, tie=tie, candidate_chunk=chunk,
                                   return_ranks=True, breakdowns=False)
    full = evaluate_link_prediction(score_fn, toy, batch_size=9, tie=tie, return_ranks=True,
                                    breakdowns=False)
    test = get_triples(toy, "test")
    ref = brute_answers(torch.cat([get_triples(toy, s) for s in ("train", "valid", "test")]))
    tail = [brute_rank(table[h, r].tolist(), t, ref[(h, r)], tie) for h, r, t in test.tolist()]
    head = [brute_rank(table[t, r + R].tolist(), h, ref[(t, r + R)], tie)
            for h, r, t in test.tolist()]
    assert out["ranks"].tolist() == tail + head == full["ranks"].tolist()
    assert max(widths) == min(chunk, N)


@pytest.mark.parametrize("chunk,expected_calls", [(N, 1), (N // 2 + 1, 3), (1, 2 * N - 1)])
def test_chunked_update_scores_each_chunk_but_the_last_twice(chunk, expected_calls):
    # pass 1 reads the targets' scores, pass 2 counts; the chunk scored last in pass 1 is kept,
    # so one chunk costs one scoring, and the ranks still equal the full update's
    gen = torch.Generator().manual_seed(3)
    triples = torch.stack([torch.randint(0, N, (40, ), generator=gen),
                           torch.randint(0, R, (40, ), generator=gen),
                           torch.randint(0, N, (40, ), generator=gen)], 1)
    scores = tie_scores(gen, 12)
    h, r, t = triples[:12].unbind(1)
    calls = []

    def score_chunk(sl):
        calls.append(sl)
        return scores[:, sl]

    metric = FilteredRankMetric(FilterIndex(triples, N, R))
    ranks = metric.update_chunked(score_chunk, h, r, t, chunk_size=chunk)
    full = FilteredRankMetric(FilterIndex(triples, N, R)).update(scores, h, r, t)
    assert len(calls) == expected_calls
    assert ranks.tolist() == full.tolist()


def test_chunked_evaluation_of_trained_models_equals_the_full_one(tmp_path):
    # MoMoK (sliced candidate tables) and a PyG KGE model through the training loop's scorer
    from momok_pyg.datasets.synthetic import make_synthetic_mmkg
    from momok_pyg.metrics import FilterIndex
    from momok_pyg.training import TrainConfig
    from momok_pyg.training.loop import _evaluate, build_model
    tiny = dict(num_entities=300, num_triples=2000, num_groups=6, num_attributes=4)
    data = make_synthetic_mmkg(**tiny)
    fi = FilterIndex.from_data(data)
    for model_name in ("momok", "complex"):
        config = TrainConfig(synthetic=tiny, model=model_name, dim=8, progress=False)
        model = build_model(config, data)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        full = _evaluate(model, data, "test", config, fi)
        chunked = _evaluate(model, data, "test",
                            TrainConfig(synthetic=tiny, model=model_name, dim=8,
                                        eval_candidate_chunk=64, progress=False), fi)
        for k in ("mrr", "mr", "hits@1", "hits@10"):
            assert chunked[k] == pytest.approx(full[k], rel=1e-6), (model_name, k)
