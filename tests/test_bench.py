"""The benchmark's naive reference computes the same model as momok_pyg.

``momok_pyg/nn/reference.py`` writes MoMoK's equations literally (per-sample Tucker core,
experts recomputed for every use, per-query sort-based ranking). Built from a MoMoK instance
it must give the same scores and the same filtered ranks in eval mode; otherwise the speed
comparison of ``benchmarks/bench_momok.py`` would compare two different models.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from momok_pyg.datasets import build_mmkg, get_triples
from momok_pyg.evaluate import evaluate_link_prediction
from momok_pyg.nn import MoMoK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_common  # noqa: E402

from momok_pyg.nn.reference import NaiveMoMoK, naive_rank  # noqa: E402

N, R = 60, 4


@pytest.fixture(scope="module")
def small_mmkg():
    g = torch.Generator().manual_seed(0)

    def triples(n):
        return torch.stack([torch.randint(0, N, (n, ), generator=g),
                            torch.randint(0, R, (n, ), generator=g),
                            torch.randint(0, N, (n, ), generator=g)], dim=1)

    present = torch.rand(N, generator=g) > 0.2  # some entities miss their image
    return build_mmkg(N, R, {"train": triples(300), "valid": triples(40), "test": triples(40)},
                      features={"image": torch.randn(N, 23, generator=g),
                                "text": torch.randn(N, 17, generator=g)},
                      masks={"image": present})


@pytest.fixture(scope="module")
def model_pair(small_mmkg):
    torch.manual_seed(0)
    model = MoMoK.from_data(small_mmkg, dim=16, num_experts=3)
    # Move every parameter and buffer away from its (often symmetric) initial value so that
    # gates, biases, temperatures and BatchNorm statistics all matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    model.eval()
    naive = NaiveMoMoK(model).eval()
    return model, naive


def test_naive_scores_equal_momok(small_mmkg, model_pair):
    model, naive = model_pair
    head = torch.randint(0, N, (48, ))
    rel = torch.randint(0, 2 * R, (48, ))
    with torch.no_grad():
        fast, slow = model(head, rel), naive(head, rel)
    assert set(fast.scores) == set(slow.scores) == {"structure", "image", "text", "joint"}
    for m in fast.scores:
        assert fast.scores[m].abs().max() > 1e-3  # non-trivial scores
        torch.testing.assert_close(slow.scores[m], fast.scores[m])
    for m in fast.views:
        torch.testing.assert_close(slow.views[m], fast.views[m])
        torch.testing.assert_close(slow.gates[m], fast.gates[m])
    torch.testing.assert_close(naive.predict(head, rel), model.predict(head, rel))


def test_naive_ranks_equal_momok(small_mmkg, model_pair):
    model, naive = model_pair
    ref = evaluate_link_prediction(model.predict, small_mmkg, "test", batch_size=32,
                                   breakdowns=False, return_ranks=True)
    slow = naive_rank(naive.predict, small_mmkg, "test", batch_size=32)
    assert slow["count"] == ref["count"] == 2 * get_triples(small_mmkg, "test").size(0)
    torch.testing.assert_close(slow["ranks"], ref["ranks"].double())
    assert slow["mrr"] == pytest.approx(ref["mrr"], rel=1e-9)


def test_naive_loss_equals_momok_loss(small_mmkg, model_pair):
    model, naive = model_pair
    head = torch.randint(0, N, (16, ))
    rel = torch.randint(0, 2 * R, (16, ))
    target = (torch.rand(16, N) < 0.05).float()
    target[:, 0] = 1.0
    with torch.no_grad():
        scores = model(head, rel).scores
    torch.testing.assert_close(naive.kgc_loss(scores, target), model.kgc_loss(scores, target))


def test_naive_gradients_equal_momok(small_mmkg, model_pair):
    # the training step's backward (fused fusion node, recomputed head views, grouped Tucker
    # products, fused 1-N loss) against autograd through the literal equations; eval mode so
    # that no dropout or gate noise is drawn, gradients on
    model, naive = model_pair
    g = torch.Generator().manual_seed(3)
    head = torch.randint(0, N, (24, ), generator=g)
    rel = torch.randint(0, 2 * R, (24, ), generator=g)
    target = (torch.rand(24, N, generator=g) < 0.05).float()
    target[:, 0] = 1.0
    params = list(model.kgc_parameters())
    fast = torch.autograd.grad(model.forward_loss(head, rel, target.to_sparse()).loss,
                               params, allow_unused=True)
    slow = torch.autograd.grad(naive.kgc_loss(naive(head, rel).scores, target), params,
                               allow_unused=True)
    names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
    checked = 0
    for name, a, b in zip(names, fast, slow):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
            checked += int(a.abs().max() > 0)
    assert checked >= len(names) // 2  # most parameters get a non-zero gradient


def test_dropout_modes_compare_pairs_seeds():
    from dropout_modes import compare

    def run(mode, seed, mrr, curve):
        return {"mode": mode, "seed": seed, "best_epoch": 4, "train_seconds": 1.0,
                "test": {"mrr": mrr, "hits@10": 2 * mrr},
                "valid_curve": [{"epoch": 2 * (i + 1), "mrr": v} for i, v in enumerate(curve)]}

    runs = [run("moments", 0, 0.30, [0.1, 0.2]), run("sample", 0, 0.29, [0.1, 0.3]),
            run("moments", 1, 0.34, [0.2, 0.3]), run("sample", 1, 0.32, [0.2, 0.1])]
    s = compare(runs, ["moments", "sample"])
    assert s["moments"]["test_mrr_mean"] == pytest.approx(0.32)
    assert s["moments"]["valid_epochs"] == [2, 4]
    assert s["sample"]["valid_mrr_mean"] == pytest.approx([0.15, 0.2])
    d = s["moments_minus_sample"]
    assert d["seeds"] == [0, 1]
    assert d["test_mrr_diff_mean"] == pytest.approx(0.015)  # paired: (0.01 + 0.02) / 2
    assert d["within_noise"] is True  # 0.015 <= 2 x seed noise (std 0.028 / 0.021)
    far = [dict(r, test={"mrr": r["test"]["mrr"] + (0.2 if r["mode"] == "sample" else 0),
                         "hits@10": 0}) for r in runs]
    assert compare(far, ["moments", "sample"])["moments_minus_sample"]["within_noise"] is False


def test_hidden_dropout_micro_benchmark_writes_every_variant(tmp_path):
    import json
    import subprocess
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_hidden_dropout.py"
    out = tmp_path / "hd.json"
    subprocess.run([sys.executable, str(script), "--batch", "24", "--dim", "6", "--groups", "3",
                    "--rounds", "2", "--out", str(out)], check=True, capture_output=True)
    res = json.loads(out.read_text())
    assert set(res["median_seconds"]) == {"sample_fused", "sample_eager", "moments",
                                          "no_dropout"}
    assert all(len(v) == 2 and min(v) > 0 for v in res["seconds"].values())
    assert res["ratio_to_sample_fused"]["sample_fused"] == 1.0
    assert res["config"]["dim"] == 6
    # the machine is told apart by more than its CPU name (two "AMD EPYC" machines differed
    # 2.3x in bf16 matmul rate)
    feats = res["env"]["cpu_features"]
    assert feats["capability"] == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        first = cpuinfo.read_text().split("\n\n")[0]
        flags = next(line for line in first.splitlines() if line.startswith("flags")).split()
        assert feats["flags"] == [f for f in bench_common.MATMUL_FLAGS if f in flags[2:]]
        assert "/" in feats["family_model"] and "?" not in feats["family_model"]


def test_malloc_variant_option_parses_default_bytes_and_rejects_the_rest():
    import argparse

    import bench_momok
    assert bench_momok.malloc_variant("default") is None
    assert bench_momok.malloc_variant("8388608") == 8 << 20
    with pytest.raises(argparse.ArgumentTypeError, match="'default' or a number of bytes"):
        bench_momok.malloc_variant("8MiB")
    assert bench_momok.malloc_variant_name(None) == bench_momok.MALLOC_VARIANT
    assert "a fixed 8 MiB threshold" in bench_momok.malloc_variant_name(8 << 20)


def test_counted_flops_match_torch_flop_counter():
    """The FLOPs bench_momok.py divides by the time (step_flops) against torch's own count of
    the matmul-like ops MoMoK runs: the same within 5 % for an evaluation forward, and for a
    training step (forward, backward, ExID) once the heads' recomputed expert views, which
    the benchmark leaves out as unnecessary work, are added back and the padding of the
    experts' input-gradient products (ReMoKE) is taken out. The all-entity gate logits
    and mixture run as fused kernels (ReMoKE.candidates), which the counter does not see:
    their multiply-adds (gate scorers U_m, U'_m in training, and the mixture; backward twice
    the forward) are added to its count."""
    from bench_common import step_flops
    from torch.utils.flop_counter import FlopCounterMode

    from momok_pyg.nn.kernels import fused
    # Under the counting mode the fused kernels run op by op (nn.kernels.fused.run_compiled): a
    # kernel compiled under it and kept would make later in-process runs differ bitwise from
    # subprocess runs that compiled their own (test_train_resume).
    compiled_before = dict(fused._COMPILED)
    g = torch.Generator().manual_seed(1)
    n, r, d, b, k = 200, 4, 16, 64, 3
    in_dims = {"structure": d, "image": 23, "text": 17}

    def triples(num):
        return torch.stack([torch.randint(0, n, (num, ), generator=g),
                            torch.randint(0, r, (num, ), generator=g),
                            torch.randint(0, n, (num, ), generator=g)], dim=1)

    data = build_mmkg(n, r, {"train": triples(300), "valid": triples(40), "test": triples(40)},
                      features={m: torch.randn(n, in_dims[m], generator=g)
                                for m in ("image", "text")})
    torch.manual_seed(0)
    model = MoMoK.from_data(data, dim=d, num_experts=k, hidden_dropout=0.0)
    head = torch.randint(0, n, (b, ), generator=g)
    rel = torch.randint(0, 2 * r, (b, ), generator=g)
    target = torch.zeros(b, n)
    target[torch.arange(b), torch.randint(0, n, (b, ), generator=g)] = 1.0
    kw = dict(B=b, U=int(torch.unique(rel).numel()), N=n, dim=d, rel_dim=d, in_dims=in_dims,
              num_relations2=2 * r, K=k)

    def fused_gate_and_mix(train: bool) -> float:
        forward = (3 if train else 2) * 2 * n * k * d
        return len(in_dims) * forward * (3 if train else 1)

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.predict(head, rel)
    counted = step_flops("momok", train=False, exid=False, **kw)["total"]
    assert counted == pytest.approx(fc.get_total_flops() + fused_gate_and_mix(False), rel=0.05)

    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model.forward_loss(head, rel, target)
        (out.loss + 1e-4 * model.exid.upper_bound(out.views)).backward()
        model.exid.learning_loss({m: v.detach() for m, v in out.views.items()}).backward()
    heads_views = 3.0 * sum(2 * b * di * k * d for di in in_dims.values())
    # the input gradients of the experts run d_in padded to a multiple of 16 (ReMoKE): the
    # padding's products are executed, and not necessary
    padding = sum(2 * (n + b) * k * d * (-di % 16) for di in in_dims.values())
    counted = step_flops("momok", **kw)["total"]
    assert counted + heads_views == pytest.approx(
        fc.get_total_flops() - padding + fused_gate_and_mix(True), rel=0.05)
    assert fused._COMPILED == compiled_before


def test_parallel_benchmark_latency_throughput_and_ratio():
    import bench_parallel
    # the first epoch is not timed; the median of the rest is the latency
    assert bench_parallel.latency([9.0, 2.0, 4.0, 3.0]) == 3.0
    assert bench_parallel.latency([5.0]) == 5.0
    with pytest.raises(ValueError, match="no epoch"):
        bench_parallel.latency([])
    s = bench_parallel.summarise({"alone": [[7.0, 10.0, 10.0]],
                                  "side_by_side": [[9.0, 15.0, 15.0], [9.0, 30.0, 30.0]]})
    assert s["alone"]["epochs_per_hour"] == pytest.approx(360.0)
    assert s["side_by_side"]["latency_seconds"] == [15.0, 30.0]
    assert s["side_by_side"]["epochs_per_hour"] == pytest.approx(240.0 + 120.0)
    assert s["side_by_side_vs_alone"] == pytest.approx(1.0)


def test_parallel_benchmark_trains_each_mode_and_writes_json(tmp_path):
    import bench_parallel
    out = tmp_path / "parallel.json"
    result = bench_parallel.main([
        "--dataset", "synthetic", "--model", "tucker", "--epochs", "2", "--cores", "2",
        "--root", str(tmp_path / "data"), "--set", "dim=8", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"]
    assert written["config"]["dim"] == 8 and written["config"]["epochs"] == 2
    assert written["threads"] == {"alone": 2, "side_by_side": 1}
    alone, side = written["summary"]["alone"], written["summary"]["side_by_side"]
    assert len(alone["epoch_seconds"]) == 1 and len(side["epoch_seconds"]) == 2
    assert all(len(p) == 2 for p in alone["epoch_seconds"] + side["epoch_seconds"])
    ratio = side["epochs_per_hour"] / alone["epochs_per_hour"]
    assert written["summary"]["side_by_side_vs_alone"] == pytest.approx(ratio)


def test_subnormal_benchmark_off_mode_is_the_unflushed_loss_and_writes_json(tmp_path):
    import bench_subnormal

    import momok_pyg.nn.loss as loss_module
    from momok_pyg.training import TrainConfig, train
    # "off" swaps in the loss as it was (subnormals kept) and restores the current one after
    torch.manual_seed(0)
    score = torch.linspace(0.0, -110.0, 300).repeat(4, 1)
    target = torch.zeros(4, 300)
    target[:, 0] = 1
    row, col, value = loss_module.sparse_rows(target)
    current = loss_module._ce_loss_and_grad_
    with bench_subnormal.flush(False):
        loss_off, g_off = loss_module._ce_loss_and_grad_(score.clone(), row, col, value, 0.0)
    assert loss_module._ce_loss_and_grad_ is current
    loss_on, g_on = current(score.clone(), row, col, value, 0.0)
    assert bench_subnormal.subnormal_fraction(g_off) > 0.0
    assert bench_subnormal.subnormal_fraction(g_on) == 0.0
    torch.testing.assert_close(loss_on, loss_off)
    torch.testing.assert_close(g_on, g_off, rtol=1e-6, atol=2 * torch.finfo(torch.float32).tiny)
    # the kernel and the training-step timings of a (tiny, synthetic) run's last.pt
    tiny = dict(num_entities=200, num_triples=1500, num_groups=5, num_attributes=4)
    run = tmp_path / "run"
    train(TrainConfig(synthetic=tiny, dim=8, epochs=1, batch_size=256, progress=False), run)
    out = tmp_path / "subnormal.json"
    result = bench_subnormal.main([
        "--batch", "32", "--entities", "500", "--dim", "8", "--score-std", "1", "40",
        "--repeats", "1", "--run", str(run), "--steps", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["kernel"] == result["kernel"]
    low, high = written["kernel"]
    assert low["subnormal_fraction_unflushed"] == 0.0
    assert high["subnormal_fraction_unflushed"] > 0.0
    assert all(k["ms_flush_on"] > 0 and k["ms_flush_off"] > 0 for k in written["kernel"])
    step = written["step"]
    assert step["epochs_trained"] == 1 and step["model"] == "momok" and step["steps"] == 1
    assert step["off_vs_on"] == pytest.approx(step["trained_flush_off_s"]
                                              / step["trained_flush_on_s"])
