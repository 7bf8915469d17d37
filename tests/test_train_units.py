"""Unit tests of the training utilities that need no model: 1-N batching, checkpoint
atomicity, RNG capture, config round-trip, CLI argument mapping."""
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from momok_pyg.cli import build_parser, config_from_args
from momok_pyg.training import (
    PRESETS,
    OneToNQueries,
    TrainConfig,
    atomic_torch_save,
    epoch_generator,
    get_rng_state,
    load_checkpoint,
    remove_stale_tmp,
    set_rng_state,
)


def _random_triples(seed=0, n=300, num_ent=40, num_rel=5):
    g = torch.Generator().manual_seed(seed)
    t = torch.stack([torch.randint(num_ent, (n,), generator=g),
                     torch.randint(num_rel, (n,), generator=g),
                     torch.randint(num_ent, (n,), generator=g)], 1)
    return torch.cat([t, t[:17]])  # with duplicate triples


def test_one_to_n_queries_match_brute_force():
    triples, N, R = _random_triples(), 40, 5
    q = OneToNQueries(triples, N, R)
    ref = {}
    for h, r, t in triples.tolist():
        ref.setdefault((h, r), set()).add(t)
        ref.setdefault((t, r + R), set()).add(h)
    assert len(q) == len(ref)
    pairs = list(zip(q.entity.tolist(), q.relation.tolist()))
    assert set(pairs) == set(ref) and len(set(pairs)) == len(pairs)
    idx = torch.randperm(len(q), generator=torch.Generator().manual_seed(1))[:64]
    y = q.target(idx)
    assert y.shape == (64, N) and y.dtype == torch.float32
    assert torch.equal(q.sparse_target(idx).to_dense(), y)
    for row, i in enumerate(idx.tolist()):
        expect = torch.zeros(N)
        expect[list(ref[pairs[i]])] = 1
        assert torch.equal(y[row], expect)
    # lookup / known_mask agree with the dict, including pairs that are no query
    ent = torch.tensor([p[0] for p in pairs[:5]] + [0, 39])
    rel = torch.tensor([p[1] for p in pairs[:5]] + [2 * R - 1, 0])
    mask = q.known_mask(ent, rel)
    for row, (e, r) in enumerate(zip(ent.tolist(), rel.tolist())):
        expect = torch.zeros(N, dtype=torch.bool)
        expect[list(ref.get((e, r), ()))] = True
        assert torch.equal(mask[row], expect)


def test_batches_cover_every_query_once_and_depend_only_on_seed_and_epoch():
    q = OneToNQueries(_random_triples(), 40, 5)
    seen = torch.cat([idx for _, _, idx in q.batches(50, epoch_generator(3, 7))])
    assert torch.equal(seen.sort().values, torch.arange(len(q)))
    sizes = [idx.numel() for _, _, idx in q.batches(50, epoch_generator(3, 7))]
    assert sizes[:-1] == [50] * (len(sizes) - 1) and 0 < sizes[-1] <= 50
    again = torch.cat([idx for _, _, idx in q.batches(50, epoch_generator(3, 7))])
    other = torch.cat([idx for _, _, idx in q.batches(50, epoch_generator(3, 8))])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    for ent, rel, idx in q.batches(64, epoch_generator(0, 1)):
        assert torch.equal(ent, q.entity[idx]) and torch.equal(rel, q.relation[idx])


def test_atomic_save_leaves_old_file_intact_when_the_writer_dies(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1, "w": torch.arange(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed while pickling")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"epoch": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_sigkilled_writer_leaves_only_a_stale_tmp_that_is_removed(tmp_path):
    # A child process writes a temp file and is SIGKILLed before os.replace.
    code = textwrap.dedent(f"""
        import os, signal, torch
        from momok_pyg.training import checkpoint as c
        c.atomic_torch_save({{"epoch": 1}}, {str(tmp_path / 'last.pt')!r})
        def die(*a):
            os.kill(os.getpid(), signal.SIGKILL)
        c.os.replace = die
        c.atomic_torch_save({{"epoch": 2}}, {str(tmp_path / 'last.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert remove_stale_tmp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    atomic_torch_save({"rng": get_rng_state()}, tmp_path / "s.pt")
    expect = (torch.rand(4), random.random(), np.random.rand(3))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    got = (torch.rand(4), random.random(), np.random.rand(3))
    assert torch.equal(expect[0], got[0]) and expect[1] == got[1]
    assert np.array_equal(expect[2], got[2])


def test_config_round_trip_presets_and_validation(tmp_path):
    cfg = TrainConfig.for_dataset("mkg_y", features="names", exid=False,
                                  eval_modalities=["structure", "text"], lr=None)
    assert cfg.dataset == "MKG-Y" and cfg.dim == PRESETS["MKG-Y"]["dim"]
    assert cfg.lr == PRESETS["MKG-Y"]["lr"] and cfg.exid is False
    cfg.save(tmp_path / "config.json")
    back = TrainConfig.load(tmp_path / "config.json")
    assert back == cfg and back.resume_mismatch(cfg) == []
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.resume_mismatch(TrainConfig.for_dataset("MKG-Y", dim=8)) == ["features", "dim",
                                                                           "exid",
                                                                           "eval_modalities"]
    with pytest.raises(ValueError, match="model must be one of .*'rotate'.*got 'transh'"):
        TrainConfig(model="transh")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    (tmp_path / "bad.json").write_text(json.dumps({"dim": 8, "colour": "red"}))
    with pytest.raises(ValueError, match=r"bad\.json.*colour"):
        TrainConfig.load(tmp_path / "bad.json")


def test_cli_flags_map_onto_config():
    p = build_parser()
    args = p.parse_args(["train"])
    cfg = config_from_args(args)
    assert cfg == TrainConfig.for_dataset("synthetic")
    args = p.parse_args(["train", "--dataset", "MKG-W", "--features", "none", "--dim", "32",
                         "--rel-dim", "16", "--experts", "2", "--lambda", "0.01", "--lr",
                         "0.002", "--batch-size", "128", "--no-noise", "--no-rel-temperature",
                         "--fusion", "mean", "--no-joint", "--no-exid", "--eval-modalities",
                         "structure", "--model", "tucker", "--bf16", "--threads", "1",
                         "--patience", "0", "--eval-every", "3", "--seed", "7",
                         "--label-smoothing", "0.1"])
    cfg = config_from_args(args)
    assert (cfg.dataset, cfg.features, cfg.dim, cfg.rel_dim, cfg.num_experts) == (
        "MKG-W", "none", 32, 16, 2)
    assert (cfg.lambda_club, cfg.lr, cfg.batch_size, cfg.seed) == (0.01, 0.002, 128, 7)
    assert not (cfg.noise or cfg.rel_temperature or cfg.joint or cfg.exid)
    assert (cfg.fusion, cfg.eval_modalities, cfg.model, cfg.bf16, cfg.threads) == (
        "mean", ["structure"], "tucker", True, 1)
    assert (cfg.patience, cfg.eval_every, cfg.label_smoothing) == (0, 3, 0.1)
    assert cfg.epochs == PRESETS["MKG-W"]["epochs"]
