"""Tests of the synthetic MMKG: determinism, schema invariants, the planted signal, caching."""
import os

import pytest
import torch
from sklearn.neighbors import NearestCentroid

from momok_pyg.datasets.schema import ENTITY, REL, SPLITS, get_triples
from momok_pyg.datasets.synthetic import SyntheticMMKG, make_synthetic_mmkg


def _tensors(data):
    """Every tensor of an MMKG, keyed by (store, attribute)."""
    out = {}
    for store in data.stores:
        key = getattr(store, "_key", None)
        for k, v in store.items():
            if isinstance(v, torch.Tensor):
                out[(key, k)] = v
    return out


def _filtered_ranks(score_fn, data, split):
    """Brute-force filtered ranks of tail and (reciprocal) head prediction on `split`."""
    R = data.num_relations
    known = torch.cat([get_triples(data, s) for s in SPLITS])
    known = torch.cat([known, torch.stack([known[:, 2], known[:, 1] + R, known[:, 0]], 1)])
    trip = get_triples(data, split)
    queries = torch.cat([trip, torch.stack([trip[:, 2], trip[:, 1] + R, trip[:, 0]], 1)])
    ranks = []
    for h, r, t in queries.tolist():
        s = score_fn(h, r).clone()
        target = s[t].item()
        others = known[(known[:, 0] == h) & (known[:, 1] == r), 2]
        s[others] = float("-inf")
        ranks.append(int((s > target).sum()) + 1)
    return torch.tensor(ranks, dtype=torch.float)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_mmkg()


def test_same_seed_is_bit_identical_and_other_seed_differs():
    kw = dict(num_entities=300, num_groups=6, num_attributes=4, num_triples=3000)
    a, b = make_synthetic_mmkg(**kw, seed=3), make_synthetic_mmkg(**kw, seed=3)
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 10
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert a[ENTITY].name == b[ENTITY].name
    c = make_synthetic_mmkg(**kw, seed=4)
    assert not torch.equal(a[ENTITY].image, c[ENTITY].image)
    assert not torch.equal(get_triples(a, "train"), get_triples(c, "train"))


def test_generation_leaves_global_rng_alone():
    state = torch.get_rng_state()
    make_synthetic_mmkg(num_entities=200, num_groups=5, num_attributes=4, num_triples=2000)
    assert torch.equal(state, torch.get_rng_state())


def test_schema_and_split_invariants(data):
    N, R = data[ENTITY].num_nodes, data.num_relations
    assert (N, R) == (1500, 12) and data.modalities == ["image", "text"]
    assert data[ENTITY].image.shape == (N, 64) and data[ENTITY].text.shape == (N, 48)
    splits = {s: get_triples(data, s) for s in SPLITS}
    assert 10_000 <= splits["train"].size(0) <= 20_000
    assert torch.equal(data[REL].edge_index, data[REL].train_edge_index)
    # Every relation in train, no self-loop, no duplicate within or across splits.
    assert torch.bincount(splits["train"][:, 1], minlength=R).min() > 0
    allt = torch.cat(list(splits.values()))
    assert bool((allt[:, 0] != allt[:, 2]).all())
    assert torch.unique(allt, dim=0).size(0) == allt.size(0)
    # Cold entities: none in train, capped triples elsewhere, a fair share of test.
    cold = data[ENTITY].is_cold
    assert int(cold.sum()) == 150
    tr = splits["train"]
    assert not bool((cold[tr[:, 0]] | cold[tr[:, 2]]).any())
    ev = torch.cat([splits["valid"], splits["test"]])
    per_cold = torch.bincount(torch.cat([ev[cold[ev[:, 0]], 0], ev[cold[ev[:, 2]], 2]]),
                              minlength=N)
    assert int(per_cold.max()) <= 4
    te = splits["test"]
    cold_share = (cold[te[:, 0]] | cold[te[:, 2]]).float().mean().item()
    assert 0.15 <= cold_share <= 0.5
    # Missing modalities: round(0.05 N) each, zero rows.
    for m in data.modalities:
        mask = data[ENTITY][f"{m}_mask"]
        assert int((~mask).sum()) == 75
        assert bool((data[ENTITY][m][~mask] == 0).all())
        assert bool((data[ENTITY][m][mask].abs().sum(1) > 0).all())
    # Planted rule: every triple maps the head cell to the tail cell by the relation maps.
    g, a = data[ENTITY].group, data[ENTITY].attribute
    h, r, t = allt.t()
    assert torch.equal(data.relation_group_map[r, g[h]], g[t])
    assert torch.equal(data.relation_attribute_map[r, a[h]], a[t])


def test_features_reveal_latent_cell_of_cold_entities(data):
    """A nearest-centroid probe fit on warm entities recovers the group (image) and the
    attribute (text), hence the latent cell, of cold entities far above chance; the structure
    has no edge to read for them."""
    ent = data[ENTITY]
    cold = ent.is_cold
    hit = {}
    for m, label, floor in (("image", ent.group, 0.6), ("text", ent.attribute, 0.75)):
        mask = ent[f"{m}_mask"]
        clf = NearestCentroid().fit(ent[m][mask & ~cold].numpy(), label[mask & ~cold].numpy())
        hit[m] = torch.from_numpy(clf.predict(ent[m].numpy())) == label
        acc = hit[m][mask & cold].float().mean().item()
        assert acc > floor, (m, acc)  # chance: 1/25 (group), 1/6 (attribute)
    both = ent.image_mask & ent.text_mask & cold
    cell_acc = (hit["image"] & hit["text"])[both].float().mean().item()
    assert cell_acc > 0.5  # chance: 1/150
    # Structure: group votes from training neighbours (inverting the known relation maps)
    # recover the group of warm entities, but there is no vote at all for cold entities.
    tr = get_triples(data, "train")
    inv = torch.argsort(data.relation_group_map, dim=1)
    h, r, t = tr.t()
    votes = torch.zeros(ent.num_nodes, 25)
    votes.index_put_((h, inv[r, ent.group[t]]), torch.ones(h.numel()), accumulate=True)
    votes.index_put_((t, data.relation_group_map[r, ent.group[h]]), torch.ones(h.numel()),
                     accumulate=True)
    warm_acc = (votes[~cold].argmax(1) == ent.group[~cold]).float().mean().item()
    assert warm_acc > 0.99
    assert votes[cold].sum() == 0


def test_group_oracle_gets_high_filtered_mrr(data):
    """Knowing cells and popularity ranks the test tails well; a random scorer does not."""
    ent = data[ENTITY]
    A = data.relation_attribute_map.size(1)
    gmap = torch.cat([data.relation_group_map, torch.argsort(data.relation_group_map, 1)])
    amap = torch.cat([data.relation_attribute_map,
                      torch.argsort(data.relation_attribute_map, 1)])
    cell = ent.group * A + ent.attribute
    bonus = ent.popularity / ent.popularity.max()

    def oracle(h, r):
        target = gmap[r, ent.group[h]] * A + amap[r, ent.attribute[h]]
        return (cell == target).float() * 2 + bonus

    gen = torch.Generator().manual_seed(0)
    rand = torch.rand(ent.num_nodes, generator=gen)
    mrr = (1 / _filtered_ranks(oracle, data, "test")).mean().item()
    rand_mrr = (1 / _filtered_ranks(lambda h, r: rand, data, "test")).mean().item()
    assert mrr > 0.3 and rand_mrr < 0.05, (mrr, rand_mrr)


def test_dataset_in_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = dict(num_entities=200, num_groups=5, num_attributes=4, num_triples=2000, seed=1)
    ds = SyntheticMMKG(**kw)
    assert len(ds) == 1 and os.listdir(tmp_path) == []
    assert torch.equal(ds[0][ENTITY].text, make_synthetic_mmkg(**kw)[ENTITY].text)
    assert "seed=1" in repr(ds)


def test_dataset_on_disk_caches_by_params(tmp_path):
    kw = dict(num_entities=200, num_groups=5, num_attributes=4, num_triples=2000)
    ds = SyntheticMMKG(str(tmp_path), seed=2, log=False, **kw)
    files = sorted(os.listdir(tmp_path / "processed"))
    name = [f for f in files if f.startswith("synthetic_")]
    assert len(name) == 1 and "n200" in name[0] and "seed2" in name[0]
    again = SyntheticMMKG(str(tmp_path), seed=2, log=False, **kw)
    for k, v in _tensors(ds[0]).items():
        assert torch.equal(v, _tensors(again[0])[k]), k
    assert again[0].modalities == ["image", "text"]
    assert again[0][ENTITY].name == ds[0][ENTITY].name
    SyntheticMMKG(str(tmp_path), seed=3, log=False, **kw)
    assert len([f for f in os.listdir(tmp_path / "processed")
                if f.startswith("synthetic_")]) == 2


@pytest.mark.parametrize("kw, err", [
    (dict(num_entities=10), ValueError),  # fewer than 2 entities per cell
    (dict(cold_ratio=1.5), ValueError),
    (dict(valid_ratio=0.6, test_ratio=0.5), ValueError),
    (dict(image_noise=-1.0), ValueError),
    (dict(num_triples="many"), ValueError),
    (dict(seed=-1), ValueError),
])
def test_bad_arguments_raise(kw, err):
    with pytest.raises(err, match="make_synthetic_mmkg: expected"):
        make_synthetic_mmkg(**kw)
    with pytest.raises(TypeError, match="bogus"):
        SyntheticMMKG(bogus=1)


def test_signature_defaults_match_dataset_defaults():
    """SyntheticMMKG() and make_synthetic_mmkg() must generate the same default graph."""
    import inspect

    from momok_pyg.datasets.synthetic import _DEFAULTS
    sig = inspect.signature(make_synthetic_mmkg).parameters
    assert {k: v.default for k, v in sig.items()} == _DEFAULTS


def test_few_shot_cold_entities():
    data = make_synthetic_mmkg(num_entities=300, num_groups=6, num_attributes=4,
                               num_triples=4000, cold_train_triples=1, cold_max_triples=3)
    cold = data[ENTITY].is_cold
    deg = {}
    for s in SPLITS:
        t = get_triples(data, s)
        ends = torch.cat([t[cold[t[:, 0]], 0], t[cold[t[:, 2]], 2]])
        deg[s] = torch.bincount(ends, minlength=300)[cold]
    assert int(deg["train"].max()) == 1 and int(deg["train"].sum()) > 0.8 * int(cold.sum())
    assert int((deg["train"] + deg["valid"] + deg["test"]).max()) <= 3
    assert int((deg["valid"] + deg["test"]).sum()) > 0
