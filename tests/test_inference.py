"""Inference API: top-k agrees with ``predict()``, filtering, head queries, gates."""
import pytest
import torch

from momok_pyg.datasets.schema import get_triples
from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.inference import Predictor, format_result
from momok_pyg.training import TrainConfig, train

TINY = dict(num_entities=600, num_triples=8000, num_groups=10, num_attributes=5)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    data = make_synthetic_mmkg(**TINY)
    cfg = TrainConfig.for_dataset("synthetic", synthetic=TINY, dim=16, epochs=1, lr=0.01,
                                  batch_size=512, threads=1, progress=False)
    run = tmp_path_factory.mktemp("inference")
    train(cfg, run, data=data, log=lambda s: None)
    return Predictor.from_run(run, data=data)


def _known(data, h, r):
    t = get_triples(data, "train")
    return set(t[(t[:, 0] == h) & (t[:, 1] == r), 2].tolist())


def test_top_k_agrees_with_argsort_of_predict(predictor):
    data, model = predictor.data, predictor.model
    h = int(get_triples(data, "train")[0, 0])
    r = int(get_triples(data, "train")[0, 1])
    res = predictor.tails(h, r, k=20, filtered=False)
    scores = model.predict(torch.tensor([h]), torch.tensor([r]))[0]
    assert [c.entity_id for c in res.candidates] == torch.argsort(
        scores, descending=True, stable=True)[:20].tolist()
    for c in res.candidates:
        assert c.score == pytest.approx(float(scores[c.entity_id]), abs=1e-5)
        assert c.entity == data["entity"].name[c.entity_id]
        assert sum(c.modality_scores.values()) == pytest.approx(c.score, rel=1e-4, abs=1e-4)
    assert set(res.candidates[0].modality_scores) == set(model.score_modalities)


def test_filtered_drops_known_training_tails_and_keeps_the_order(predictor):
    data = predictor.data
    h, r = (int(x) for x in get_triples(data, "train")[0, :2])
    known = _known(data, h, r)
    assert known
    n = data["entity"].num_nodes
    full = predictor.tails(h, r, k=n, filtered=False)
    filt = predictor.tails(h, r, k=10, filtered=True)
    expect = [c.entity_id for c in full.candidates if c.entity_id not in known][:10]
    assert [c.entity_id for c in filt.candidates] == expect
    assert any(c.known for c in full.candidates) and not any(c.known for c in filt.candidates)


def test_head_query_is_the_reciprocal_tail_query_and_names_resolve(predictor):
    data, model = predictor.data, predictor.model
    h, r, t = (int(x) for x in get_triples(data, "train")[3])
    R = data.num_relations
    res = predictor.heads(data.relation_names[r], data["entity"].name[t], k=5, filtered=False)
    scores = model.predict(torch.tensor([t]), torch.tensor([r + R]))[0]
    assert [c.entity_id for c in res.candidates] == torch.argsort(
        scores, descending=True, stable=True)[:5].tolist()
    assert res.direction == "head" and res.relation_id == r and res.entity_id == t
    assert "(?, " in format_result(res)
    with pytest.raises(KeyError, match="did you mean"):
        predictor.tails(data["entity"].name[h] + "x", r)
    with pytest.raises(KeyError, match="out of range"):
        predictor.tails(h, 10 ** 6)


def test_gates_are_distributions_over_the_experts(predictor):
    res = predictor.tails(0, 0, k=3)
    assert set(res.gates) == {"structure", "image", "text"}
    for g in res.gates.values():
        assert len(g) == 3 and all(x >= 0 for x in g)
        assert sum(g) == pytest.approx(1.0, abs=1e-5)
    d = res.to_dict()
    assert d["candidates"][0]["rank"] == 1 and d["gates"] == res.gates
