import torch

from momok_pyg.datasets import SyntheticMMKG, list_datasets, load_dataset, make_synthetic_mmkg


def test_synthetic_is_registered_in_memory_and_on_disk(tmp_path):
    assert "synthetic" in list_datasets()
    ref = make_synthetic_mmkg(seed=3)
    mem = load_dataset("synthetic", root=None, seed=3)
    assert isinstance(mem, SyntheticMMKG)
    disk = load_dataset("Synthetic", root=str(tmp_path), seed=3, log=False)
    assert any((tmp_path / "synthetic" / "processed").glob("synthetic_*.pt"))
    for ds in (mem, disk):
        data = ds[0]
        assert torch.equal(data["entity"].image, ref["entity"].image)
        assert torch.equal(data["entity", "relation", "entity"].test_edge_index,
                           ref["entity", "relation", "entity"].test_edge_index)


def test_mmkg_composes_with_a_pyg_encoder():
    from torch_geometric.nn import RGCNConv

    data = make_synthetic_mmkg(num_entities=400, num_triples=3000, seed=1)
    store = data["entity", "relation", "entity"]
    conv = RGCNConv(data["entity"].image.size(1), 16, data.num_relations)
    out = conv(data["entity"].image, store.edge_index, store.edge_type)
    assert out.shape == (400, 16) and torch.isfinite(out).all()
    # the training graph the encoder sees is exactly the train split
    assert torch.equal(store.edge_index, store.train_edge_index)
