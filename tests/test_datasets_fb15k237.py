"""FB15k-237 through PyG's own FB15k_237, on a small file set written here in its raw format:
loadable by name, PyG's ids kept with the names recovered, bad lines named, and a model trains
on it like on the MMKG benchmarks."""
import random

import pytest
import torch

from momok_pyg.datasets import FB15k237, MMKGFormatError, get_triples, load_dataset
from momok_pyg.training import TrainConfig, train


def _write_raw(folder, seed=0, n_ent=40, n_rel=6, sizes=(300, 40, 40)):
    rng = random.Random(seed)
    ents = [f"/m/0{k:03x}" for k in range(n_ent)]
    rels = [f"/film/rel_{k}/prop" for k in range(n_rel)]
    lines = {}
    for name, size in zip(("train", "valid", "test"), sizes):
        rows = [(rng.choice(ents), rng.choice(rels), rng.choice(ents)) for _ in range(size)]
        lines[name] = rows
        (folder / f"{name}.txt").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in rows))
    return lines


def test_loads_by_name_with_pygs_ids_and_the_names_recovered(tmp_path):
    raw = tmp_path / "fb"
    raw.mkdir()
    lines = _write_raw(raw)
    data = load_dataset("FB15k-237", root=str(tmp_path / "data"), raw_from=str(raw))[0]
    assert data.dataset_name == "FB15k-237" and data.modalities == []
    names, rel_names = data["entity"].name, data.relation_names
    for split in ("train", "valid", "test"):
        triples = get_triples(data, split)
        assert triples.size(0) == len(lines[split])
        # every stored triple spells its raw line back through the recovered names
        got = [(names[h], rel_names[r], names[t]) for h, r, t in triples.tolist()]
        assert got == lines[split]
    # ids in order of first appearance over train, valid, test (PyG's numbering)
    first = []
    for split in ("train", "valid", "test"):
        for h, _, t in lines[split]:
            for e in (h, t):
                if e not in first:
                    first.append(e)
    assert list(names) == first
    # PyG's own processed splits hold the same ids
    from torch_geometric.datasets import FB15k_237
    pyg = FB15k_237(str(tmp_path / "data" / "FB15k-237"), split="val")[0]
    assert torch.equal(get_triples(data, "valid")[:, [0, 2]].t(), pyg.edge_index)
    # a second load reads the processed file
    again = FB15k237(root=str(tmp_path / "data"))[0]
    assert torch.equal(get_triples(again, "test"), get_triples(data, "test"))


@pytest.mark.parametrize("bad, match", [
    ("/m/01\t/r\n", r"valid.txt, line 2: expected 'head<TAB>relation<TAB>tail'"),
    ("/m/01\t/r\t/m/02", r"valid.txt: the last line has no newline"),
])
def test_bad_raw_files_are_named(tmp_path, bad, match):
    raw = tmp_path / "fb"
    raw.mkdir()
    _write_raw(raw)
    first = (raw / "valid.txt").read_text().splitlines(keepends=True)[0]
    (raw / "valid.txt").write_text(first + bad)
    with pytest.raises(MMKGFormatError, match=match):
        FB15k237(root=str(tmp_path / "data"), raw_from=str(raw))
    assert not (tmp_path / "data" / "FB15k-237" / "processed" / "mmkg.pt").exists()


def test_missing_files_and_features_are_refused(tmp_path):
    (tmp_path / "fb").mkdir()
    with pytest.raises(FileNotFoundError, match="missing"):
        FB15k237(root=str(tmp_path / "data"), raw_from=str(tmp_path / "fb"))
    with pytest.raises(ValueError, match="no feature files"):
        FB15k237(root=str(tmp_path / "data"), features="names")


def test_a_model_trains_on_it(tmp_path):
    raw = tmp_path / "fb"
    raw.mkdir()
    _write_raw(raw, sizes=(600, 60, 60))
    config = TrainConfig(dataset="fb15k_237", root=str(tmp_path / "data"), raw_from=str(raw),
                         model="tucker", dim=16, epochs=2, eval_every=1, threads=1,
                         progress=False, device="cpu")
    assert config.dataset == "FB15k-237"
    metrics = train(config, tmp_path / "run")
    assert metrics["dataset"] == "FB15k-237" and metrics["test"]["count"] == 120
