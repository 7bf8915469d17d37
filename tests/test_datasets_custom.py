"""Parser, custom MMKGs, feature files and bad input (all on small files written here)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from momok_pyg.datasets import (
    MKGY,
    CustomMMKG,
    DataLeakWarning,
    MMKGFormatError,
    get_triples,
    list_datasets,
    load_dataset,
    load_feature_file,
    read_mmkg,
    register_dataset,
    summary,
    unregister_dataset,
)
from momok_pyg.datasets.download import RAW_ENV, URL_ENV
from momok_pyg.datasets.registry import DATASETS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mmkg"

TRAIN = "a r1 b .\nb r2 c .\nc r1 a .\nd r2 a .\n"
VALID = "a r2 c .\n"
TEST = "b r1 d\n"  # trailing '.' is optional


def write_kg(folder: Path, train=TRAIN, valid=VALID, test=TEST, ids=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    if ids:
        (folder / "entity2id.txt").write_text("d 0\nc 1\nb 2\na 3\n", encoding="utf-8")
        (folder / "relation2id.txt").write_text("r2\t0\nr1\t1\n", encoding="utf-8")
    return folder


def triples_by_name(data, split):
    e, r = data["entity"].name, data.relation_names
    return [(e[h], r[k], e[t]) for h, k, t in get_triples(data, split).tolist()]


# --------------------------------------------------------------------------- reading

def test_read_folder_infers_ids_first_seen_and_sorted(tmp_path):
    kg = write_kg(tmp_path / "kg")
    data = read_mmkg(kg)
    assert data["entity"].name == ["a", "b", "c", "d"]
    assert data.relation_names == ["r1", "r2"]
    assert triples_by_name(data, "train") == [("a", "r1", "b"), ("b", "r2", "c"),
                                              ("c", "r1", "a"), ("d", "r2", "a")]
    assert triples_by_name(data, "test") == [("b", "r1", "d")]
    assert data.dataset_name == "kg"
    data = read_mmkg(kg, id_order="sorted")
    assert data.relation_names == ["r1", "r2"]
    assert read_mmkg(write_kg(tmp_path / "kg2", train="z r a\n" + TRAIN),
                     id_order="sorted")["entity"].name == ["a", "b", "c", "d", "z"]


def test_read_with_id_files_uses_them(tmp_path):
    kg = write_kg(tmp_path / "kg", ids=True)
    data = read_mmkg(kg)
    assert data["entity"].name == ["d", "c", "b", "a"]
    assert data.relation_names == ["r2", "r1"]
    assert get_triples(data, "train")[0].tolist() == [3, 1, 2]  # a r1 b
    assert triples_by_name(data, "valid") == [("a", "r2", "c")]


def test_id_file_names_may_contain_spaces_and_non_ascii(tmp_path):
    kg = write_kg(tmp_path / "kg", train="Zürich\tlocated in\tSwiss Conf\n",
                  valid="Zürich\tlocated in\tSwiss Conf\n", test="Zürich\tlocated in\tSwiss Conf\n")
    (kg / "entity2id.txt").write_text("Swiss Conf 1\nZürich 0\n", encoding="utf-8")
    (kg / "relation2id.txt").write_text("located in 0\n", encoding="utf-8")
    data = read_mmkg(kg)
    assert data["entity"].name == ["Zürich", "Swiss Conf"]
    assert get_triples(data, "train").tolist() == [[0, 0, 1]]


def test_custom_dataset_features_masks_roundtrip(tmp_path):
    kg = write_kg(tmp_path / "kg")
    img = np.arange(12, dtype=np.float64).reshape(4, 3)
    img[2] = np.nan  # entity c has no image: its row is ignored and zeroed
    np.save(tmp_path / "img.npy", img)
    torch.save(np.eye(4, 2, dtype=np.float32), tmp_path / "txt.pth")  # numpy inside .pth
    kwargs = dict(train=kg / "train.txt", valid=kg / "valid.txt", test=kg / "test.txt",
                  features={"image": tmp_path / "img.npy", "text": tmp_path / "txt.pth"},
                  masks={"image": np.array([1, 1, 0, 1])}, name="toy", log=False)
    ds = CustomMMKG(str(tmp_path / "root"), **kwargs)
    data = ds[0]
    assert data.modalities == ["image", "text"]
    assert data["entity"].image.dtype == torch.float32
    assert data["entity"].image_mask.tolist() == [True, True, False, True]
    assert data["entity"].image[2].tolist() == [0.0, 0.0, 0.0]
    assert data["entity"].image[3].tolist() == [9.0, 10.0, 11.0]
    assert data["entity"].text_mask.all()
    assert summary(data)["image_present"] == 3
    # cached: a second instance loads the same processed file, no re-processing
    files = sorted(os.listdir(ds.processed_dir))
    assert CustomMMKG(str(tmp_path / "root"), **kwargs)[0]["entity"].image_mask.sum() == 3
    assert sorted(os.listdir(ds.processed_dir)) == files
    # a changed input gets a different processed file (no stale cache)
    kwargs["masks"] = {"image": np.array([1, 0, 0, 1])}
    assert CustomMMKG(str(tmp_path / "root"), **kwargs)[0]["entity"].image_mask.sum() == 2


def test_custom_dataset_audit_and_leak_warning(tmp_path):
    kg = write_kg(tmp_path / "kg", valid="a r1 b .\na r2 c .\n", test="b r1 d .\nb r1 d .\n")
    with pytest.warns(DataLeakWarning, match=r"1 of 2 valid triples"):
        ds = CustomMMKG(str(tmp_path / "root"), kg / "train.txt", kg / "valid.txt",
                        kg / "test.txt", log=False)
    a = ds.audit()["splits"]
    assert a["valid"]["in_train"] == 1 and a["test"]["duplicates"] == 1
    assert a["test"]["unseen_entity_triples"] == 0 and a["train"]["duplicates"] == 0


def test_registry_is_extensible(tmp_path):
    calls = []

    def factory(root, **kw):
        calls.append((root, kw))
        return "ok"

    register_dataset("My-Toy", factory, aliases=("toy_kg", ))
    try:
        assert load_dataset("mytoy", root="r", k=1) == "ok"
        assert load_dataset("TOY-KG", root="r") == "ok"
        assert calls[0] == ("r", {"k": 1})
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("MKG_Y", factory)
        with pytest.raises(KeyError, match="My-Toy"):
            load_dataset("nope")
        assert "My-Toy" in list_datasets()
    finally:
        unregister_dataset("toy_kg")
    assert "mytoy" not in DATASETS and "toykg" not in DATASETS
    assert "My-Toy" not in list_datasets()


# --------------------------------------------------------------------------- bad input

def _err(tmp_path, match, **files):
    kg = write_kg(tmp_path / "kg", **{k: v for k, v in files.items()
                                      if k in ("train", "valid", "test")})
    for name in ("entity2id", "relation2id"):
        if name in files:
            (kg / f"{name}.txt").write_bytes(files[name].encode("utf-8")
                                             if isinstance(files[name], str) else files[name])
    with pytest.raises(MMKGFormatError, match=match):
        read_mmkg(kg)


def test_bad_field_count(tmp_path):
    _err(tmp_path, r"kg/train\.txt, line 2: expected 'head relation tail'.*got 2 fields",
         train="a r1 b .\na r1\n")
    _err(tmp_path, r"valid\.txt, line 1: .*got 4 fields", valid="a r2 c x\n")


def test_non_integer_id(tmp_path):
    _err(tmp_path, r"entity2id\.txt, line 2: expected an integer entity id.*'x'",
         entity2id="a 0\nb x\n", relation2id="r1 0\nr2 1\n")


def test_unknown_name_in_split(tmp_path):
    _err(tmp_path, r"test\.txt, line 1: unknown tail entity 'd'; expected a name listed in "
         r".*entity2id\.txt", train="a r1 b .\n", valid="a r1 b .\n", test="b r1 d .\n",
         entity2id="a 0\nb 1\n", relation2id="r1 0\n")
    _err(tmp_path, r"train\.txt, line 1: unknown relation 'r1'.*relation2id\.txt",
         train="a r1 b .\n", valid="a r1 b .\n", test="a r1 b .\n", entity2id="a 0\nb 1\n",
         relation2id="r9 0\n")


def test_duplicate_name_duplicate_id_and_id_gap(tmp_path):
    _err(tmp_path, r"entity2id\.txt, line 3: duplicate entity name 'a' \(first on line 1\)",
         entity2id="a 0\nb 1\na 2\n", relation2id="r1 0\nr2 1\n")
    _err(tmp_path, r"relation2id\.txt, line 2: duplicate relation id 0",
         entity2id="a 0\nb 1\nc 2\nd 3\n", relation2id="r1 0\nr2 0\n")
    _err(tmp_path, r"entity2id\.txt, line 4: entity id 7 is out of range; expected the 4 ids "
         r"to be exactly 0..3 \(id 3 is missing\)",
         entity2id="a 0\nb 1\nc 2\nd 7\n", relation2id="r1 0\nr2 1\n")


def test_non_utf8_bytes(tmp_path):
    _err(tmp_path, r"entity2id\.txt, line 2: byte b'\\xff' at column 2 is not valid UTF-8",
         entity2id=b"a 0\nb\xff 1\n", relation2id="r1 0\n")


def test_empty_split(tmp_path):
    _err(tmp_path, r"valid\.txt: the split is empty", valid="\n\n")


def test_feature_row_count_dims_and_nan(tmp_path):
    kg = write_kg(tmp_path / "kg")
    np.save(tmp_path / "short.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(MMKGFormatError, match=r"short\.npy: expected 4 rows .* got 3 rows"):
        read_mmkg(kg, features={"image": tmp_path / "short.npy"})
    with pytest.raises(MMKGFormatError, match=r"expected a 2-D feature matrix.*got 1-D"):
        read_mmkg(kg, features={"image": torch.zeros(4)})
    x = torch.ones(4, 2)
    x[1, 0] = float("inf")
    with pytest.raises(MMKGFormatError, match=r"row 1 .* NaN/Inf"):
        read_mmkg(kg, features={"image": x})
    with pytest.raises(MMKGFormatError, match=r"mask of 4 values"):
        read_mmkg(kg, features={"image": torch.ones(4, 2)}, masks={"image": torch.ones(3)})


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"), ))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(MMKGFormatError, match=r"evil\.pth: cannot be loaded safely"):
        load_feature_file(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    np.save(tmp_path / "obj.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(MMKGFormatError, match=r"obj\.npy: cannot read as a plain \.npy"):
        load_feature_file(tmp_path / "obj.npy")


def test_failed_process_leaves_no_processed_files(tmp_path):
    kg = write_kg(tmp_path / "kg")
    np.save(tmp_path / "bad.npy", np.full((4, 2), np.nan, dtype=np.float32))
    with pytest.raises(MMKGFormatError, match="NaN/Inf"):
        CustomMMKG(str(tmp_path / "root"), kg / "train.txt", kg / "valid.txt",
                   kg / "test.txt", features={"image": tmp_path / "bad.npy"}, log=False)
    processed = tmp_path / "root" / "processed"
    assert not processed.exists() or os.listdir(processed) == []


# --------------------------------------------------------------------------- official

@pytest.fixture
def mkgy_root(tmp_path, monkeypatch):
    if not (SHARED / "MKG-Y" / "train.txt").is_file():
        pytest.skip(f"raw MMKG benchmark files not found in {SHARED}")
    monkeypatch.delenv(RAW_ENV, raising=False)
    monkeypatch.delenv(URL_ENV, raising=False)
    return tmp_path


def test_official_features_loaded_safely(mkgy_root):
    raw = mkgy_root / "MKG-Y" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(15000, 8, generator=g).numpy()
    img[5] = 0.0  # an all-zero row = no image
    torch.save(img, raw / "img_features.pth")  # upstream format: numpy array via torch.save
    txt = torch.rand(15000, 4, generator=g)
    np.save(raw / "text_features.npy", txt.numpy())
    ds = MKGY(root=str(mkgy_root), features="official", raw_from=str(SHARED / "MKG-Y"),
              log=False)
    data = ds[0]
    assert data.modalities == ["image", "text"]
    assert torch.allclose(data["entity"].image, torch.from_numpy(img))
    assert torch.equal(data["entity"].text, txt)
    assert data["entity"].image_mask.sum() == 14999 and not data["entity"].image_mask[5]
    assert os.path.basename(ds.processed_paths[0]) == "data_official.pt"
    # structure-only processing of the same root is a separate cache
    assert MKGY(root=str(mkgy_root), log=False)[0].modalities == []

    torch.save(torch.rand(14999, 4), raw / "text_features.pth")  # .pth preferred over .npy
    with pytest.raises(MMKGFormatError, match=r"text_features\.pth: expected 15000 rows .* "
                                              r"got 14999 rows"):
        MKGY(root=str(mkgy_root), features="official", force_reload=True, log=False)


def test_official_features_missing_file_explains(mkgy_root):
    with pytest.raises(FileNotFoundError, match=r"img_features\.pth.*drive\.google\.com.*"
                                                r"features='names'"):
        MKGY(root=str(mkgy_root), features="official", raw_from=str(SHARED / "MKG-Y"),
             log=False)
    assert not any((mkgy_root / "MKG-Y" / "processed").glob("data*"))
