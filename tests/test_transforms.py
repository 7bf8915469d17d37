"""Tests of the robustness transforms (ModalityNoise, ModalityMissing, LinkSparsify)."""
import pytest
import torch
import torch_geometric.transforms as T

from momok_pyg.datasets.schema import ENTITY, REL, SPLITS, build_mmkg, get_triples
from momok_pyg.datasets.synthetic import SyntheticMMKG, make_synthetic_mmkg
from momok_pyg.transforms import LinkSparsify, ModalityMissing, ModalityNoise, feature_scale


@pytest.fixture(scope="module")
def data():
    return make_synthetic_mmkg(num_entities=600, num_groups=10, num_attributes=4,
                               num_triples=6000, missing_ratio=0.1, seed=5)


def _snapshot(data):
    return {(getattr(s, "_key", None), k): v.clone()
            for s in data.stores for k, v in s.items() if isinstance(v, torch.Tensor)}


def _assert_same(data, snap):
    now = _snapshot(data)
    assert now.keys() == snap.keys()
    for k in snap:
        assert torch.equal(now[k], snap[k]), k


def _assert_splits_equal(a, b, splits=("valid", "test")):
    for s in splits:
        assert torch.equal(get_triples(a, s), get_triples(b, s)), s


ALL = [
    lambda: ModalityNoise(0.3, 0.5, seed=1),
    lambda: ModalityMissing(0.3, seed=1),
    lambda: LinkSparsify(0.3, seed=1),
]


@pytest.mark.parametrize("make", ALL)
def test_common_contract(data, make):
    """Input untouched, valid/test unchanged, seeded, global RNG untouched."""
    snap = _snapshot(data)
    rng = torch.get_rng_state()
    out1, out2 = make()(data), make()(data)
    assert torch.equal(rng, torch.get_rng_state())
    _assert_same(data, snap)
    _assert_splits_equal(out1, data)
    assert torch.equal(out1[REL].edge_index, out1[REL].train_edge_index)
    assert torch.equal(out1[REL].edge_type, out1[REL].train_edge_type)
    for k, v in _snapshot(out1).items():  # same seed -> same result
        assert torch.equal(v, _snapshot(out2)[k]), k
    t = make()
    t.seed = 2
    assert any(not torch.equal(v, _snapshot(t(data))[k]) for k, v in _snapshot(out1).items())


def test_noise_fraction_and_statistics(data):
    std = 0.5
    out = ModalityNoise(0.3, std, seed=0)(data)
    for m in data.modalities:
        x, mask = data[ENTITY][m], data[ENTITY][f"{m}_mask"]
        diff = out[ENTITY][m] - x
        changed = (diff != 0).any(dim=1)
        assert int(changed.sum()) == round(0.3 * int(mask.sum()))
        assert not bool((changed & ~mask).any())  # missing rows stay zero
        assert torch.equal(out[ENTITY][f"{m}_mask"], mask)
        emp = diff[changed].std().item()
        assert emp == pytest.approx(std * feature_scale(x, mask), rel=0.05), m
        assert abs(diff[changed].mean().item()) < 0.05 * emp


def test_noise_absolute_and_selected_modality(data):
    out = ModalityNoise(1.0, 2.0, modalities="image", relative=False)(data)
    diff = out[ENTITY].image - data[ENTITY].image
    mask = data[ENTITY].image_mask
    assert bool((diff[mask] != 0).all(dim=1).all())
    assert diff[mask].std().item() == pytest.approx(2.0, rel=0.05)
    assert torch.equal(out[ENTITY].text, data[ENTITY].text)
    zero = ModalityNoise(0.7, 0.0)(data)
    assert torch.equal(zero[ENTITY].image, data[ENTITY].image)


def test_feature_scale_matches_definition():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 11.0], [100.0, 100.0]])
    mask = torch.tensor([True, True, True, False])
    expected = ((torch.tensor([4.0, 28.0])).mean().sqrt()).item()  # var (unbiased) per dim
    assert feature_scale(x, mask) == pytest.approx(expected)


def test_missing_fraction_and_masks(data):
    out = ModalityMissing(0.4, seed=3)(data)
    for m in data.modalities:
        before, after = data[ENTITY][f"{m}_mask"], out[ENTITY][f"{m}_mask"]
        removed = before & ~after
        assert not bool((after & ~before).any())  # nobody gains a modality
        assert int(removed.sum()) == round(0.4 * int(before.sum()))
        assert bool((out[ENTITY][m][~after] == 0).all())
        assert torch.equal(out[ENTITY][m][after], data[ENTITY][m][after])
    assert torch.equal(get_triples(out, "train"), get_triples(data, "train"))
    only = ModalityMissing(1.0, modalities=["text"])(data)
    assert not bool(only[ENTITY].text_mask.any()) and bool((only[ENTITY].text == 0).all())
    assert torch.equal(only[ENTITY].image_mask, data[ENTITY].image_mask)
    none = ModalityMissing(0.0)(data)
    assert torch.equal(none[ENTITY].text_mask, data[ENTITY].text_mask)


def test_sparsify_fraction_and_order(data):
    train = get_triples(data, "train")
    out = LinkSparsify(0.25, seed=7)(data)
    kept = get_triples(out, "train")
    assert kept.size(0) == train.size(0) - round(0.25 * train.size(0))
    # The kept triples are a subsequence of the original ones, in order.
    code = lambda t: (t[:, 0] * 10_000 + t[:, 1]) * 10_000 + t[:, 2]  # noqa: E731
    pos = torch.searchsorted(code(train).sort().values, code(kept))
    assert torch.equal(code(train).sort().values[pos], code(kept))
    idx = {c: i for i, c in enumerate(code(train).tolist())}
    order = [idx[c] for c in code(kept).tolist()]
    assert order == sorted(order)
    assert torch.equal(out[ENTITY].image, data[ENTITY].image)
    assert get_triples(LinkSparsify(1.0)(data), "train").size(0) == 0


@pytest.mark.parametrize("make, match", [
    (lambda: ModalityNoise(-0.1, 1.0), "ratio"),
    (lambda: ModalityNoise(0.5, -1.0), "std"),
    (lambda: ModalityMissing(1.5), "ratio"),
    (lambda: LinkSparsify("a lot"), "ratio"),
    (lambda: ModalityMissing(0.1, modalities=[]), "modalities"),
    (lambda: ModalityNoise(0.1, 0.1, modalities=[1]), "modalities"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_modality_lists_available(data):
    for t in (ModalityNoise(0.1, 0.1, modalities=["audio"]), ModalityMissing(0.1, ["audio"])):
        with pytest.raises(KeyError, match="audio.*image.*text"):
            t(data)


def test_repr_shows_arguments():
    assert repr(ModalityNoise(0.2, 0.5, ["image"], seed=3)) == (
        "ModalityNoise(ratio=0.2, std=0.5, modalities=['image'], seed=3, relative=True)")
    assert repr(ModalityMissing(0.1)) == "ModalityMissing(ratio=0.1, modalities=None, seed=0)"
    assert repr(LinkSparsify(0.5, seed=1)) == "LinkSparsify(ratio=0.5, seed=1)"


def test_compose_and_dataset_transform():
    kw = dict(num_entities=200, num_groups=5, num_attributes=4, num_triples=2000)
    t = T.Compose([LinkSparsify(0.5), ModalityMissing(0.5, seed=1)])
    ds = SyntheticMMKG(transform=t, **kw)
    raw = SyntheticMMKG(**kw)[0]
    a, b = ds[0], ds[0]
    assert torch.equal(a[ENTITY].image_mask, b[ENTITY].image_mask)
    n_train = raw[REL].train_edge_type.numel()
    assert a[REL].train_edge_type.numel() == n_train - round(0.5 * n_train)
    present = int(raw[ENTITY].image_mask.sum())
    assert int(a[ENTITY].image_mask.sum()) == present - round(0.5 * present)
    _assert_splits_equal(a, raw)


def test_graph_without_features():
    data = build_mmkg(3, 1, {s: torch.tensor([[0, 0, 1]]) for s in SPLITS})
    assert ModalityNoise(0.5, 1.0)(data)[ENTITY].num_nodes == 3
    with pytest.raises(KeyError, match=r"\[\]"):
        ModalityMissing(0.5, modalities=["image"])(data)
