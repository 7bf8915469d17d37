"""Sampled-candidate training: the candidate draw, its log-Q correction (an unbiased estimate
of the full softmax normaliser), equality with 1-N when every entity is a candidate, and
learning through the loop."""
import math

import pytest
import torch

from momok_pyg.datasets import get_triples
from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.training import TrainConfig, train
from momok_pyg.training.batching import OneToNQueries, sample_candidates
from momok_pyg.training.loop import build_model

TINY = dict(num_entities=400, num_triples=5000, num_groups=8, num_attributes=4)
RANDOM_MRR = sum(1.0 / k for k in range(1, 401)) / 400


def test_candidates_hold_the_answers_and_k_draws_with_the_log_q_shift():
    gen = torch.Generator().manual_seed(0)
    answers = torch.tensor([5, 17, 5, 99])
    cand, shift, pos = sample_candidates(answers, 1000, 50, gen)
    assert torch.equal(cand[pos], answers)  # every answer at its column
    assert bool((cand[1:] > cand[:-1]).all())  # sorted, distinct
    in_a = torch.isin(cand, answers)
    assert int(in_a.sum()) == 3 and 50 <= cand.numel() <= 53
    assert torch.all(shift[in_a] == 0)
    assert torch.allclose(shift[~in_a], torch.tensor(math.log(1000 / 50)))
    all_cand, all_shift, _ = sample_candidates(answers, 30, 30, gen)
    assert torch.equal(all_cand, torch.arange(30)) and not all_shift.any()
    with pytest.raises(ValueError, match="positive"):
        sample_candidates(answers, 30, 0)


def test_the_shifted_normaliser_is_unbiased():
    # E[sum_c exp(s_c + shift_c)] = sum_e exp(s_e): Horvitz-Thompson over the uniform draw
    gen = torch.Generator().manual_seed(1)
    n, k = 200, 20
    s = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    answers = torch.tensor([3, 8])
    full = s.exp().sum()
    est = []
    for _ in range(4000):
        cand, shift, _ = sample_candidates(answers, n, k, gen)
        est.append((s[cand] + shift.double()).exp().sum())
    est = torch.stack(est)
    stderr = est.std() / math.sqrt(est.numel())
    assert abs(est.mean() - full) < 4 * stderr, (float(est.mean()), float(full))


@pytest.mark.parametrize("model_name", ["momok", "distmult"])
def test_every_entity_a_candidate_equals_one_to_n(model_name):
    data = make_synthetic_mmkg(**TINY)
    config = TrainConfig(synthetic=TINY, model=model_name, dim=8, progress=False)
    model = build_model(config, data).eval()  # no dropout / noise: deterministic
    queries = OneToNQueries(get_triples(data, "train"), 400, data.num_relations)
    idx = torch.arange(64)
    ent, rel = queries.entity[idx], queries.relation[idx]
    full = model.forward_loss(ent, rel, queries.sparse_target(idx)).loss
    cand, target, shift = queries.sampled_target(idx, 400)  # k >= N: all entities
    sampled = model.forward_loss_sampled(ent, rel, target, cand, shift).loss
    torch.testing.assert_close(sampled, full, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad],
                                 allow_unused=True)
    sampled = model.forward_loss_sampled(ent, rel, target, cand, shift).loss
    g_sampled = torch.autograd.grad(sampled, [p for p in model.parameters()
                                              if p.requires_grad], allow_unused=True)
    for a, b in zip(g_full, g_sampled):
        if a is None or b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_sampled_training_learns(tmp_path):
    config = TrainConfig(dataset="synthetic", synthetic=TINY, dim=32, lr=0.01, batch_size=512,
                         epochs=3, eval_every=1, patience=100, threads=1, seed=5,
                         progress=False, device="cpu", negatives=64)
    metrics = train(config, tmp_path / "run")
    assert metrics["test"]["mrr"] > 4 * RANDOM_MRR, metrics["test"]
    with pytest.raises(ValueError, match="needs loss='ce'"):
        TrainConfig(negatives=64, loss="bce")
