"""Real-data tests of the four MMKG benchmarks (raw files from ../shared/mmkg) and of the
download path against a loopback HTTP server."""
import functools
import http.server
import os
import shutil
import threading
import warnings
from pathlib import Path

import pytest
import torch

from momok_pyg.datasets import (
    DB15K,
    KVC16K,
    MKGW,
    MKGY,
    ChecksumError,
    DataLeakWarning,
    get_triples,
    load_dataset,
    name_to_text,
    summary,
)
from momok_pyg.datasets.download import RAW_ENV, URL_ENV
from momok_pyg.datasets.raw import read_id_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mmkg"
pytestmark = pytest.mark.skipif(not (SHARED / "MKG-Y" / "train.txt").is_file(),
                                reason=f"raw MMKG benchmark files not found in {SHARED}")

# Paper, Table 5: entities, relations, train, valid, test.
TABLE5 = {
    "DB15K": (12842, 279, 79222, 9904, 9902),
    "MKG-W": (15000, 169, 34196, 4276, 4274),
    "MKG-Y": (15000, 28, 21310, 2665, 2663),
    "Kuai16K": (16015, 4, 180190, 22523, 22525),
}
CLASSES = {"DB15K": DB15K, "MKG-W": MKGW, "MKG-Y": MKGY, "Kuai16K": KVC16K}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(RAW_ENV, raising=False)
    monkeypatch.delenv(URL_ENV, raising=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmkg")
    out = {}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for folder, cls in CLASSES.items():
            out[folder] = cls(root=str(root), raw_from=str(SHARED / folder), log=False)
    out["_warnings"] = [w for w in rec if issubclass(w.category, DataLeakWarning)]
    out["_root"] = root
    return out


@pytest.mark.parametrize("folder", list(TABLE5))
def test_table5_counts_and_schema(datasets, folder):
    ds = datasets[folder]
    data = ds[0]
    n, r, tr, va, te = TABLE5[folder]
    assert summary(data) == {"entities": n, "relations": r, "train": tr, "valid": va,
                             "test": te}
    assert len(ds) == 1 and data.modalities == []
    assert len(data["entity"].name) == n and len(data.relation_names) == r
    store = data["entity", "relation", "entity"]
    assert torch.equal(store.edge_index, store.train_edge_index)
    # ids follow entity2id.txt: check the first training line by name
    first = (SHARED / folder / "train.txt").read_text("utf-8").split("\n", 1)[0].split(" ")
    h, rel, t = get_triples(data, "train")[0].tolist()
    assert (data["entity"].name[h], data.relation_names[rel], data["entity"].name[t]) == \
        tuple(first[:3])
    # raw files are the verified upstream ones, copied into raw_dir
    for f in ("entity2id.txt", "train.txt"):
        assert (Path(ds.raw_dir) / f).read_bytes() == (SHARED / folder / f).read_bytes()


def test_audit_known_facts(datasets):
    a = {f: datasets[f].audit()["splits"] for f in CLASSES}
    assert a["DB15K"]["valid"]["in_train"] == 8719
    assert a["DB15K"]["test"]["unseen_entity_triples"] == 77
    assert (a["MKG-W"]["test"]["unseen_entity_triples"],
            a["MKG-W"]["valid"]["unseen_entity_triples"]) == (306, 333)
    assert (a["MKG-Y"]["test"]["unseen_entity_triples"],
            a["MKG-Y"]["valid"]["unseen_entity_triples"]) == (388, 400)
    assert a["Kuai16K"]["train"]["duplicates"] == 171
    assert (a["Kuai16K"]["test"]["in_train"], a["Kuai16K"]["valid"]["in_train"]) == (48, 30)
    assert datasets["MKG-W"].audit()["entities_unseen_in_train"] == 491
    assert datasets["MKG-Y"].audit()["entities_unseen_in_train"] == 612
    # persisted next to the processed data
    assert (Path(datasets["DB15K"].processed_dir) / "audit.json").is_file()


def test_in_train_mask_matches_a_python_set_and_the_audit(datasets):
    from momok_pyg.evaluate import in_train_mask
    for folder, valid_in_train, test_in_train in (("DB15K", 8719, None),
                                                  ("Kuai16K", 30, 48)):
        data = datasets[folder][0]
        train = {tuple(t) for t in get_triples(data, "train").tolist()}
        for split, expected in (("valid", valid_in_train), ("test", test_in_train)):
            mask = in_train_mask(data, split)
            brute = [tuple(t) in train for t in get_triples(data, split).tolist()]
            assert mask.tolist() == brute
            if expected is not None:
                assert int(mask.sum()) == expected


def test_leak_warning_names_the_numbers(datasets):
    msgs = [str(w.message) for w in datasets["_warnings"]]
    assert any("DB15K" in m and "8719 of 9904 valid" in m for m in msgs)
    assert any("KVC16K" in m and "48 of 22525 test" in m for m in msgs)
    assert not any("MKG-Y" in m or "MKG-W" in m for m in msgs)


def test_registry_names(datasets):
    root = str(datasets["_root"])
    for name, cls in [("mkg_y", MKGY), ("MKG-W", MKGW), ("kuai16k", KVC16K),
                      ("KVC16K", KVC16K), ("db15k", DB15K)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataLeakWarning)
            ds = load_dataset(name, root=root, log=False)
        assert type(ds) is cls and ds[0].dataset_name == cls.paper_name
    with pytest.raises(KeyError, match=r"unknown dataset 'WN9-IMG'; expected one of") as e:
        load_dataset("WN9-IMG", root=root)
    assert all(f"'{n}'" in str(e.value) for n in ("DB15K", "MKG-W", "MKG-Y", "KVC16K",
                                                   "FB15k-237"))


def test_corrupted_raw_file_in_raw_dir_is_refused(tmp_path):
    raw = tmp_path / "MKG-Y" / "raw"
    raw.mkdir(parents=True)
    for f in os.listdir(SHARED / "MKG-Y"):
        shutil.copy(SHARED / "MKG-Y" / f, raw / f)
    with open(raw / "valid.txt", "ab") as f:
        f.write(b"A r B .\n")
    with pytest.raises(ChecksumError, match=r"valid\.txt.*expected 125067 bytes"):
        MKGY(root=str(tmp_path), log=False)
    assert not any((tmp_path / "MKG-Y" / "processed").glob("*.pt"))


def test_real_entity_names_to_text():
    db = read_id_file(SHARED / "DB15K" / "entity2id.txt")
    assert name_to_text(db[3214], "DB15K") == "Walter Benjamin"
    assert name_to_text(db[6675], "DB15K") == "AC/DC"
    assert name_to_text(db[1], "DB15K") == "Franciaország"
    assert all(name_to_text(n, "DB15K") for n in db)
    y = read_id_file(SHARED / "MKG-Y" / "entity2id.txt")
    assert name_to_text(y[0], "MKG-Y") == "Gilles Mbang Ondo"
    w = read_id_file(SHARED / "MKG-W" / "entity2id.txt")
    assert all(name_to_text(n, "MKG-W") is None for n in w)
    k = read_id_file(SHARED / "Kuai16K" / "entity2id.txt")
    assert name_to_text(k[1], "KVC16K") == "厦门大学"
    assert name_to_text(k[238], "Kuai16K") == "iPhone XR"


# --------------------------------------------------------------------------- download

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(directory):
        handler = functools.partial(_Quiet, directory=str(directory))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_download_from_loopback_server(tmp_path, serve):
    url = serve(SHARED)
    ds = MKGY(root=str(tmp_path), url=url, log=False)
    assert summary(ds[0])["train"] == 21310
    assert sorted(os.listdir(tmp_path / "MKG-Y" / "raw")) == sorted(
        ["entity2id.txt", "relation2id.txt", "train.txt", "valid.txt", "test.txt"])


def test_download_base_url_from_env(tmp_path, serve, monkeypatch):
    monkeypatch.setenv(URL_ENV, serve(SHARED))
    assert summary(MKGY(root=str(tmp_path), log=False)[0])["test"] == 2663


def test_download_corrupted_file_is_refused(tmp_path, serve):
    mirror = tmp_path / "mirror" / "MKG-Y"
    mirror.mkdir(parents=True)
    for f in os.listdir(SHARED / "MKG-Y"):
        shutil.copy(SHARED / "MKG-Y" / f, mirror / f)
    data = bytearray((mirror / "train.txt").read_bytes())
    data[1000] ^= 0x01  # same size, one bit flipped
    (mirror / "train.txt").write_bytes(bytes(data))
    url = serve(tmp_path / "mirror")
    with pytest.raises(ChecksumError, match=r"127\.0\.0\.1.*MKG-Y/train\.txt.*checksum"):
        MKGY(root=str(tmp_path / "root"), url=url, log=False)
    raw = tmp_path / "root" / "MKG-Y" / "raw"
    assert not raw.exists() or os.listdir(raw) == []
    assert not (tmp_path / "root" / "MKG-Y" / "processed").exists()


def test_download_http_error_is_clear(tmp_path, serve):
    url = serve(tmp_path / "nothing-here")
    with pytest.raises(RuntimeError, match=r"download failed.*raw_from"):
        MKGY(root=str(tmp_path / "root"), url=url, log=False)
    assert os.listdir(tmp_path / "root" / "MKG-Y" / "raw") == []


def test_raw_from_env_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(RAW_ENV, str(SHARED))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/unreachable")  # must not be used
    assert summary(MKGY(root=str(tmp_path), log=False)[0])["valid"] == 2665
