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
