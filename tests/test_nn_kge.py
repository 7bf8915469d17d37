"""PyG's KGE models as 1-N scorers (momok_pyg.nn.kge): the closed-form all-candidate scores
equal the wrapped model's own forward on every (query, candidate) triple, in both directions;
they train through momok_pyg.training and are ranked by the filtered evaluator."""
import subprocess
import sys

import pytest
import torch
from torch_geometric.nn.kge import DistMult, TransE

from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.nn import KGE_MODELS, KGEScorer, one_to_n_loss
from momok_pyg.training import TrainConfig, train

N, R, D = 37, 5, 12
TINY = dict(num_entities=400, num_triples=5000, num_groups=8, num_attributes=4)
#: expected MRR of a uniformly random ranking of N candidates: H_N / N
RANDOM_MRR = sum(1.0 / k for k in range(1, TINY["num_entities"] + 1)) / TINY["num_entities"]


def _brute(kge, ent, rel):
    """phi(e, r, x) for r < R and phi(x, r - R, e) otherwise, triple by triple."""
    out = torch.empty(ent.numel(), N)
    for i, (e, r) in enumerate(zip(ent.tolist(), rel.tolist())):
        cand = torch.arange(N)
        q = torch.full((N, ), e)
        if r < R:
            out[i] = kge(q, torch.full((N, ), r), cand)
        else:
            out[i] = kge(cand, torch.full((N, ), r - R), q)
    return out


class _ShiftedDistMult(DistMult):
    """A KGEModel the wrapper has no closed form for (the generic chunked path)."""
    def forward(self, head_index, rel_type, tail_index):
        return super().forward(head_index, rel_type, tail_index) + 0.1 * head_index.float()


@pytest.mark.parametrize("name", sorted(KGE_MODELS) + ["generic"])
def test_all_candidate_scores_equal_the_models_own_triple_scores(name):
    torch.manual_seed(0)
    if name == "generic":
        kge = _ShiftedDistMult(N, R, D)
    else:
        kge = KGE_MODELS[name](num_nodes=N, num_relations=R, hidden_channels=D)
    with torch.no_grad():  # off the initial scale, so that every term matters
        for p in kge.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = KGEScorer(kge, chunk_size=50)  # generic path: several chunks
    ent = torch.randint(0, N, (9, ))
    rel = torch.tensor([0, 4, 5, 9, 2, 7, 3, 8, 6])  # tail and head queries, interleaved
    with torch.no_grad():
        expected = _brute(kge, ent, rel)
    got = model(ent, rel)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.predict(ent, rel), expected, rtol=1e-4, atol=1e-4)
    buf = torch.empty(9, N)
    assert model.predict(ent, rel, out=buf).data_ptr() == buf.data_ptr()
    # one direction alone takes the unmixed path
    torch.testing.assert_close(model(ent[:2], rel[:2]), expected[:2], rtol=1e-4, atol=1e-4)


def test_gradients_flow_through_both_directions():
    torch.manual_seed(1)
    model = KGEScorer(TransE(N, R, D, p_norm=2.0))
    ent, rel = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 6, 1, 9])
    target = torch.zeros(4, N)
    target[torch.arange(4), torch.tensor([5, 6, 7, 8])] = 1
    loss = model.forward_loss(ent, rel, target).loss
    ref = one_to_n_loss(_brute(model.kge, ent, rel), target, "ce")
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert model.kge.rel_emb.weight.grad[[0, 1, 4]].abs().sum() > 0  # r = 6, 9 -> 1, 4
    assert model.kge.rel_emb.weight.grad[[2, 3]].abs().sum() == 0


def test_bad_relations_and_modalities_are_named():
    model = KGEScorer(DistMult(N, R, D))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        model(torch.tensor([0]), torch.tensor([10]))
    with pytest.raises(ValueError, match="structure modality only"):
        model.predict(torch.tensor([0]), torch.tensor([0]), modalities=["text"])
    with pytest.raises(ValueError, match="unknown KGE model 'transh'"):
        KGEScorer.from_data(make_synthetic_mmkg(**TINY), model="transh")
    with pytest.raises(TypeError, match="KGEModel"):
        KGEScorer(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["distmult", "rotate"])
def test_kge_models_learn_through_the_training_loop(tmp_path, name):
    config = TrainConfig(dataset="synthetic", synthetic=TINY, model=name, dim=32, lr=0.1,
                         batch_size=512, epochs=15, eval_every=5, patience=100, threads=1,
                         seed=3, progress=False, device="cpu")
    metrics = train(config, tmp_path / name)
    # 15 epochs reach 4.7x (DistMult) and 6.5x (RotatE) the MRR of a random ranking
    assert metrics["test"]["mrr"] > 3 * RANDOM_MRR, metrics["test"]
    assert set(metrics["per_modality"]) == {"structure"}
    assert metrics["per_modality"]["structure"]["mrr"] == pytest.approx(metrics["test"]["mrr"])


def test_cli_trains_a_pyg_kge_model(tmp_path):
    out = tmp_path / "transe"
    proc = subprocess.run(
        [sys.executable, "-m", "momok_pyg.cli", "train", "--model", "transe", "--synthetic",
         *[f"{k}={v}" for k, v in TINY.items()], "--dim", "16", "--epochs", "1",
         "--threads", "1", "--no-progress", "--model-arg", "p_norm=2.0", "--out", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.json").is_file() and "TransE" in (out / "env_start.json").read_text()
