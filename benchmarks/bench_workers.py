"""The measurements of ``bench_momok.py``; each runs in its own subprocess (its own peak
RSS): ``worker_momok`` (momok_pyg as shipped), ``worker_naive`` (the naive reference),
``worker_equal`` (equal learning)."""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from bench_common import (
    BATCH_SIZE,
    FEATURE_DIMS,
    NUM_EXPERTS,
    DeviceQueries,
    _sync,
    cpu_seconds,
    epoch_batches,
    epoch_flops,
    eval_flops,
    load_mkgy,
    matmul_gflops,
    peak_rss_mb,
)


# ------------------------------------------------------------------------------------------
# workers (each runs in its own subprocess)
# ------------------------------------------------------------------------------------------
def _config(spec: Dict[str, Any], **over):
    from momok_pyg.training import TrainConfig
    kw = dict(dim=spec["dim"], batch_size=BATCH_SIZE, num_experts=NUM_EXPERTS,
              epochs=spec.get("epochs", 1), seed=spec["seed"], bf16=spec.get("bf16", False),
              progress=False, eval_batch_size=BATCH_SIZE)
    if spec.get("lr") is not None:
        kw["lr"] = spec["lr"]
    if spec.get("model_kwargs"):
        kw["model_kwargs"] = dict(spec["model_kwargs"])
    kw.update(over)
    config = TrainConfig.for_dataset("MKG-Y", **kw)
    if "malloc_mmap_threshold" in spec:  # None (glibc's default) is a value here
        config.malloc_mmap_threshold = spec["malloc_mmap_threshold"]
    return config


def _optimizers(model, config):
    from momok_pyg.training.step import build_optimizers as shipped
    return shipped(model, config)


def _setup(spec: Dict[str, Any]):
    from momok_pyg.datasets import get_triples
    from momok_pyg.training import OneToNQueries
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    data = load_mkgy(Path(spec["raw_root"]), spec["root"], seed=spec["seed"],
                     max_entities=spec.get("max_entities"))
    queries = OneToNQueries(get_triples(data, "train"), data["entity"].num_nodes,
                            data.num_relations)
    return device, data, queries


def _flop_kw(data, dim: int, model: torch.nn.Module) -> Dict[str, Any]:
    from momok_pyg.datasets.schema import STRUCTURE
    in_dims = {STRUCTURE: dim, **{m: FEATURE_DIMS[m] for m in FEATURE_DIMS}}
    modes = {m.hidden_dropout_mode for m in model.modules() if hasattr(m, "hidden_dropout_mode")}
    if len(modes) != 1:
        raise ValueError(f"expected one hidden_dropout_mode in the model, found {modes}")
    return dict(N=int(data["entity"].num_nodes), dim=dim, rel_dim=dim, in_dims=in_dims,
                num_relations2=2 * int(data.num_relations), hidden_dropout_mode=modes.pop())


def _eval_batches(data, batch_size: int, distinct: bool) -> Tuple[int, List[int]]:
    r"""``(scored queries, distinct relations per batch)`` of MKG-Y test, both directions:
    the distinct queries in the order :func:`evaluate_link_prediction` scores them
    (:obj:`distinct`), or every query in the order of ``query_tensors`` (the naive ranking)."""
    from momok_pyg.datasets import get_triples
    from momok_pyg.evaluate import distinct_queries, query_tensors
    head, rel, _, _ = query_tensors(get_triples(data, "test"), int(data.num_relations))
    if distinct:
        _, rel, _ = distinct_queries(head, rel, int(data["entity"].num_nodes))
    return rel.numel(), [int(torch.unique(r).numel()) for r in rel.split(batch_size)]


def _time_eval(fn, device, repeats: int) -> Tuple[List[float], Dict[str, Any]]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def profile_steps(model, queries, optimizer, q_optimizer, config, device: torch.device,
                  steps: int, top: int = 25) -> Dict[str, Any]:
    r""":mod:`torch.profiler` over :obj:`steps` training steps: the :obj:`top` operators by
    self time (per step), grouped by input shapes."""
    from torch.profiler import ProfilerActivity, profile

    from momok_pyg.training import train_epoch
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        train_epoch(model, DeviceQueries(queries, device, steps), optimizer, q_optimizer,
                    config, 10_000)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "steps": steps, "self_cpu_ms_per_step": total / 1e3 / steps,
        "top_ops": [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count // steps,
                     "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "share": e.self_cpu_time_total / max(total, 1)} for e in rows],
    }


def worker_momok(spec: Dict[str, Any]) -> Dict[str, Any]:
    r"""momok_pyg as shipped: ``epochs`` full epochs of ``train_epoch`` (or ``steps`` steps,
    extrapolated), then the filtered test evaluation (both directions), timed."""
    from momok_pyg.evaluate import FilterIndex, evaluate_link_prediction
    from momok_pyg.training import build_model, scorer, train_epoch
    t_start = time.perf_counter()
    device, data, queries = _setup(spec)
    config = _config(spec)
    model = build_model(config, data).to(device)
    optimizer, q_optimizer = _optimizers(model, config)
    rss_model = peak_rss_mb()
    rate32 = matmul_gflops(device)
    steps = spec.get("steps")
    wrapped = DeviceQueries(queries, device, steps)
    n_batches = queries.num_batches(BATCH_SIZE)
    epoch_s, epoch_cpu, losses = [], [], []
    for epoch in range(1, spec["epochs"] + 1):
        _sync(device)
        t0, c0 = time.perf_counter(), cpu_seconds()
        losses.append(train_epoch(model, wrapped, optimizer, q_optimizer, config, epoch))
        _sync(device)
        epoch_s.append(time.perf_counter() - t0)
        epoch_cpu.append(cpu_seconds() - c0)
    run_batches = wrapped.num_batches(BATCH_SIZE)
    per_epoch = [t * n_batches / run_batches for t in epoch_s]
    fkw = _flop_kw(data, spec["dim"], model)
    batches = epoch_batches(queries, BATCH_SIZE, spec["seed"], 1)
    flops = epoch_flops("momok", batches, **fkw)
    med = statistics.median(per_epoch)
    out: Dict[str, Any] = {
        "what": "momok_pyg (MoMoK + train_epoch + evaluate_link_prediction)",
        "bf16": bool(spec.get("bf16")), "dim": spec["dim"],
        "num_entities": int(data["entity"].num_nodes), "num_train_queries": len(queries),
        "batches_per_epoch": n_batches,
        "epoch_seconds": per_epoch, "epoch_seconds_median": med,
        "epoch_cpu_seconds": [t * n_batches / run_batches for t in epoch_cpu],
        "timing_note": ("full epochs" if steps is None else
                        f"extrapolated from {run_batches} steps per epoch"),
        "train_loss": [float(x["loss"]) for x in losses],
        "epoch_flops": flops, "epoch_tflop": flops["total"] / 1e12,
        "achieved_gflops": flops["total"] / med / 1e9,
        "matmul_gflops_fp32_worker": rate32,
        "rss_after_model_mb": rss_model,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    # evaluation: the way the training loop runs it, and with the all-entity cache
    t0 = time.perf_counter()
    fi = FilterIndex.from_data(data)
    out["filter_index_seconds"] = time.perf_counter() - t0
    repeats = spec.get("eval_repeats", 3)

    def shipped():  # the way momok_pyg.training evaluates (all-entity cache + scorer)
        try:
            from momok_pyg.training.loop import _evaluate
        except ImportError:  # pragma: no cover
            _evaluate = None
        if _evaluate is not None and device.type == "cpu":  # it ranks where its ids live
            return _evaluate(model, data, "test", config, fi, breakdowns=False)
        with model.cached_entities():
            return evaluate_link_prediction(scorer(model), data, "test",
                                            batch_size=BATCH_SIZE, filter_index=fi,
                                            breakdowns=False, device=device)

    def uncached():  # a plain call: every batch recomputes the all-entity part
        return evaluate_link_prediction(model.predict, data, "test", batch_size=BATCH_SIZE,
                                        filter_index=fi, breakdowns=False, device=device)

    if spec.get("eval", True):
        scored, U = _eval_batches(data, BATCH_SIZE, distinct=True)
        for key, fn, once in (("eval", shipped, True), ("eval_uncached", uncached, False)):
            model.eval()
            times, res = _time_eval(fn, device, repeats)
            out[f"{key}_seconds"] = times
            out[f"{key}_seconds_median"] = statistics.median(times)
            out[f"{key}_mrr"] = res["mrr"]
            ef = eval_flops("momok", scored, BATCH_SIZE, U, entities_once=once, **fkw)
            out[f"{key}_flops"] = ef
            out[f"{key}_achieved_gflops"] = ef["total"] / statistics.median(times) / 1e9
            if key == "eval":
                out["test_mrr"], out["test_hits@10"] = res["mrr"], res["hits@10"]
                out["eval_queries"] = res["count"]
                out["eval_scored_queries"] = scored  # distinct (head, relation) pairs
        out["eval_note"] = ("eval: as momok_pyg.training evaluates (inside "
                            "MoMoK.cached_entities); eval_uncached: evaluate_link_prediction("
                            "model.predict) without the cache")
    if spec.get("profile"):  # after the evaluation, so that test_mrr is after `epochs` epochs
        out["profile"] = profile_steps(model, queries, optimizer, q_optimizer, config, device,
                                       spec["profile"])
    out["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["worker_seconds"] = time.perf_counter() - t_start
    return out


def worker_naive(spec: Dict[str, Any]) -> Dict[str, Any]:
    r"""The naive reference on the same parameters: equality with momok_pyg on real queries,
    ``steps`` training steps (after one warm-up step) extrapolated to an epoch, the
    per-query evaluation of ``eval_queries`` queries extrapolated to the test split."""
    from momok_pyg.evaluate import FilterIndex, evaluate_link_prediction
    from momok_pyg.nn.reference import NaiveMoMoK, known_answers, naive_rank
    from momok_pyg.training import build_model, train_epoch
    t_start = time.perf_counter()
    device, data, queries = _setup(spec)
    config = _config(spec)
    model = build_model(config, data).to(device)
    naive = NaiveMoMoK(model)
    rss_model = peak_rss_mb()
    rate32 = matmul_gflops(device)
    fkw = _flop_kw(data, spec["dim"], model)
    out: Dict[str, Any] = {"what": "naive reference (momok_pyg/nn/reference.py)",
                           "dim": spec["dim"], "rss_after_model_mb": rss_model,
                           "matmul_gflops_fp32_worker": rate32}

    # 1) same scores and ranks as momok_pyg on real test queries (eval mode)
    n_eval = int(spec.get("eval_queries", BATCH_SIZE))
    fi = FilterIndex.from_data(data)
    ref = evaluate_link_prediction(model.predict, data, "test", batch_size=BATCH_SIZE,
                                   filter_index=fi, breakdowns=False, device=device,
                                   return_ranks=True)
    from momok_pyg.datasets import get_triples
    from momok_pyg.evaluate import query_tensors
    head, rel, _, _ = query_tensors(get_triples(data, "test"), int(data.num_relations))
    k = min(256, head.numel())
    model.eval()
    with torch.no_grad():
        a = model.predict(head[:k].to(device), rel[:k].to(device))
        b = naive.predict(head[:k].to(device), rel[:k].to(device))
    out["score_max_abs_diff"] = float((a - b).abs().max())
    out["score_max_abs"] = float(a.abs().max())
    try:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        out["scores_equal"] = True
    except AssertionError:
        out["scores_equal"] = False

    # 2) the naive per-query evaluation on a subset, extrapolated
    known = known_answers(data)
    total_q = int(ref["count"])
    n_eval = min(n_eval, total_q)
    res = naive_rank(naive.predict, data, "test", batch_size=BATCH_SIZE, max_queries=n_eval,
                     known=known)
    ref_ranks = ref["ranks"][:n_eval].double().cpu()
    diff = (res["ranks"] - ref_ranks).abs()
    out["ranks_compared"] = n_eval
    out["ranks_mismatched"] = int((diff > 0).sum())
    out["ranks_max_abs_diff"] = float(diff.max())
    scored_batches = math.ceil(n_eval / BATCH_SIZE)
    total_batches = math.ceil(total_q / BATCH_SIZE)
    est = (res["score_seconds"] / scored_batches * total_batches
           + res["rank_seconds"] / n_eval * total_q)
    out["eval_seconds_extrapolated"] = est
    out["eval_note"] = (f"extrapolated from {n_eval} of {total_q} queries "
                        f"({scored_batches} scoring batch(es), per-query ranking loop)")
    out["eval_subset_seconds"] = {"score": res["score_seconds"], "rank": res["rank_seconds"]}
    ef = eval_flops("naive", total_q, BATCH_SIZE, _eval_batches(data, BATCH_SIZE, False)[1],
                    **fkw)
    out["eval_flops"] = ef
    out["eval_achieved_gflops"] = ef["total"] / est / 1e9

    # 3) training steps through the same train_epoch, extrapolated to an epoch (plain
    #    torch.optim.Adam: the reference does what a literal implementation does)
    optimizer, q_optimizer = _optimizers(naive, dataclasses.replace(
        config, optimizer_in_backward=False))
    steps = max(1, int(spec.get("steps", 2)))
    n_batches = queries.num_batches(BATCH_SIZE)
    train_epoch(naive, DeviceQueries(queries, device, 1), optimizer, q_optimizer, config, 1)
    _sync(device)
    t0 = time.perf_counter()
    train_epoch(naive, DeviceQueries(queries, device, steps), optimizer, q_optimizer, config, 2)
    _sync(device)
    per_step = (time.perf_counter() - t0) / min(steps, n_batches)
    batches = epoch_batches(queries, BATCH_SIZE, spec["seed"], 1)
    flops = epoch_flops("naive", batches, **fkw)
    out.update({
        "batches_per_epoch": n_batches, "step_seconds": per_step,
        "epoch_seconds_extrapolated": per_step * n_batches,
        "timing_note": f"extrapolated from {min(steps, n_batches)} steps (after 1 warm-up step)",
        "epoch_flops": flops, "epoch_tflop": flops["total"] / 1e12,
        "achieved_gflops": flops["total"] / (per_step * n_batches) / 1e9,
        "peak_rss_mb": peak_rss_mb(),
    })
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["worker_seconds"] = time.perf_counter() - t_start
    return out


def worker_equal(spec: Dict[str, Any]) -> Dict[str, Any]:
    r"""Equal learning: for each seed, momok_pyg and the naive reference start from the
    same parameters, see the same batches (``train_epoch``) for ``epochs`` epochs, and are
    ranked on test by the same evaluator. Different seeds give the noise level."""
    from momok_pyg.evaluate import FilterIndex, evaluate_link_prediction
    from momok_pyg.nn.reference import NaiveMoMoK
    from momok_pyg.training import build_model, train_epoch
    t_start = time.perf_counter()
    device, data, queries = _setup(spec)
    fi = FilterIndex.from_data(data)
    rows = []
    for seed in spec["seeds"]:
        row: Dict[str, Any] = {"seed": seed}
        for kind in ("momok", "naive"):
            config = _config(spec, seed=seed, epochs=spec["epochs"])
            model = build_model(config, data).to(device)
            net = model if kind == "momok" else NaiveMoMoK(model)
            optimizer, q_optimizer = _optimizers(net, dataclasses.replace(
                config, optimizer_in_backward=(kind == "momok")))
            t0 = time.perf_counter()
            for epoch in range(1, spec["epochs"] + 1):
                train_epoch(net, DeviceQueries(queries, device, spec.get("steps")), optimizer,
                            q_optimizer, config, epoch)
            row[f"{kind}_train_seconds"] = time.perf_counter() - t0
            res = evaluate_link_prediction(net.predict, data, "test", batch_size=BATCH_SIZE,
                                           filter_index=fi, breakdowns=False, device=device)
            row[f"{kind}_mrr"] = res["mrr"]
            row[f"{kind}_hits@10"] = res["hits@10"]
        rows.append(row)
    a = [r["momok_mrr"] for r in rows]
    b = [r["naive_mrr"] for r in rows]
    diffs = [x - y for x, y in zip(a, b)]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else float("nan")  # noqa: E731
    noise = math.sqrt((sd(a) ** 2 + sd(b) ** 2) / 2) if len(rows) > 1 else float("nan")
    mean_diff = statistics.mean(diffs)
    se_diff = sd(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {
        "what": "equal learning: same seeds, same init, same batches; test MRR after training",
        "dataset": str(data.dataset_name), "dim": spec["dim"], "lr": _config(spec).lr,
        "model_kwargs": spec.get("model_kwargs") or {},
        "epochs": spec["epochs"], "steps_per_epoch": spec.get("steps") or "all",
        "per_seed": rows,
        "momok_mrr_mean": statistics.mean(a), "momok_mrr_std": sd(a),
        "naive_mrr_mean": statistics.mean(b), "naive_mrr_std": sd(b),
        "mean_diff": mean_diff, "seed_noise_std": noise, "diff_std_error": se_diff,
        "within_noise": (bool(abs(mean_diff) <= 2 * max(noise, se_diff))
                         if len(rows) > 1 else None),
        "criterion": "|mean(momok) - mean(naive)| <= 2 x max(seed-to-seed std, s.e. of the "
                     "paired differences)",
        "worker_seconds": time.perf_counter() - t_start,
    }


WORKERS = {"momok": worker_momok, "naive": worker_naive, "equal": worker_equal}

