#!/usr/bin/env python
r"""Performance benchmark of momok_pyg against a naive reference (GitHub issue "Performance").

One run times, on the same data and configuration,

* **momok_pyg** as shipped: :class:`momok_pyg.nn.MoMoK` built by
  :func:`momok_pyg.training.build_model`, trained by :func:`momok_pyg.training.train_epoch`
  on :class:`momok_pyg.training.OneToNQueries` 1-N batches, evaluated by
  :func:`momok_pyg.evaluate.evaluate_link_prediction`;
* the **naive reference** (``benchmarks/naive_reference.py``): the paper's equations written
  literally (per-sample Tucker core contraction, experts recomputed for every use, per-query
  sort-based ranking), sharing the very same parameters, trained by the same
  ``train_epoch``. Its epoch and its evaluation are too slow to run in full: a few steps /
  queries are timed and extrapolated (the JSON says so).

Data: MKG-Y from ``../shared/mmkg`` with random, seeded image (383-d) and text (384-d)
features of the official shapes. Every measurement runs in its own subprocess so that peak
RSS figures do not mix. FLOPs are *counted* (:func:`step_flops`), not profiled, and divided by
measured times; the fp32/bf16 matmul rate of this machine is measured in the same run.

Usage::

    python benchmarks/bench_momok.py                 # d = 300 and 200, 3 epochs each
    python benchmarks/bench_momok.py --bf16          # + the bf16 autocast mode
    python benchmarks/bench_momok.py --quick         # smoke test, < 1 min

See ``benchmarks/README.md`` for the fields of the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RAW = REPO.parent / "shared" / "mmkg"
FEATURE_DIMS = {"image": 383, "text": 384}  # the official MKG-Y shapes (paper Table 5)
BATCH_SIZE = 1024
NUM_EXPERTS = 3
FUSION_HEADS = 2
MATMUL_SHAPE = (1024, 300, 15000)  # [B, d] x [d, N]: one 1-N scoring product

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


# ------------------------------------------------------------------------------------------
# small utilities
# ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    r"""Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def cpu_seconds() -> float:
    r"""User + system CPU time of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32,
                  shape: Tuple[int, int, int] = MATMUL_SHAPE, repeats: int = 10,
                  rounds: int = 3) -> float:
    r"""Achieved GFLOP/s of ``torch.mm([m, k], [k, n])`` (median of :obj:`rounds` rounds of
    :obj:`repeats` products, after warm-up)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device, dtype)
    b = torch.randn(k, n, generator=gen).to(device, dtype)
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        rates.append(2.0 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    env = {
        "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "device": str(device), "git_commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch_geometric
        env["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def load_mkgy(raw_root: Path, root: str, seed: int = 0, max_entities: Optional[int] = None):
    r"""MKG-Y (``momok_pyg.datasets.MKGY`` from :obj:`raw_root`) with random seeded image and
    text features of the official shapes (:data:`FEATURE_DIMS`). With :obj:`max_entities`,
    the entities ``0..max_entities-1`` and the triples among them only (smoke tests)."""
    from momok_pyg.datasets import MKGY, build_mmkg, get_triples
    raw = Path(raw_root) / "MKG-Y"
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: MKG-Y raw files not found; pass --raw-root (the "
                                f"folder holding MKG-Y/train.txt, ...)")
    base = MKGY(root=root, raw_from=str(raw), log=False, leak_warning=False)[0]
    num_entities = int(base["entity"].num_nodes)
    triples = {s: get_triples(base, s) for s in ("train", "valid", "test")}
    if max_entities is not None and max_entities < num_entities:
        num_entities = int(max_entities)
        triples = {s: t[(t[:, 0] < num_entities) & (t[:, 2] < num_entities)]
                   for s, t in triples.items()}
    gen = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_entities, d, generator=gen) for m, d in FEATURE_DIMS.items()}
    return build_mmkg(num_entities, int(base.num_relations), triples, features=features,
                      entity_names=base["entity"].name[:num_entities],
                      relation_names=base.relation_names,
                      name="MKG-Y" + ("" if max_entities is None else f"[:{num_entities}]"))


class DeviceQueries:
    r"""Wraps :class:`momok_pyg.training.OneToNQueries` so that ``train_epoch`` gets its
    batches on :obj:`device` and at most :obj:`max_batches` of them (``None`` = all)."""
    def __init__(self, queries, device: torch.device, max_batches: Optional[int] = None):
        self.queries, self.device, self.max_batches = queries, device, max_batches

    def __len__(self) -> int:
        return len(self.queries)

    def num_batches(self, batch_size: int) -> int:
        n = self.queries.num_batches(batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)

    def target(self, index, dtype=torch.float32):
        return self.queries.target(index.cpu(), dtype).to(self.device, non_blocking=True)

    def sparse_target(self, index, dtype=torch.float32):
        return self.queries.sparse_target(index.cpu(), dtype).to(self.device)

    def batches(self, batch_size, generator=None, shuffle=True) -> Iterator:
        for i, (ent, rel, idx) in enumerate(self.queries.batches(batch_size, generator,
                                                                 shuffle)):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield ent.to(self.device), rel.to(self.device), idx


def epoch_batches(queries, batch_size: int, seed: int, epoch: int) -> List[Tuple[int, int]]:
    r"""``(B, U)`` (batch size, distinct relations) of every batch of one epoch, in the
    order ``train_epoch`` draws them."""
    from momok_pyg.training import epoch_generator
    return [(int(rel.numel()), int(torch.unique(rel).numel()))
            for _, rel, _ in queries.batches(batch_size, epoch_generator(seed, epoch))]


# ------------------------------------------------------------------------------------------
# FLOP counting (multiply-add = 2 FLOPs; matmul-like work only, elementwise ops excluded)
# ------------------------------------------------------------------------------------------
def step_flops(kind: str, B: int, U: int, N: int, dim: int, rel_dim: int,
               in_dims: Dict[str, int], num_relations2: int, K: int = NUM_EXPERTS,
               H: int = FUSION_HEADS, joint: bool = True, exid: bool = True,
               train: bool = True, all_entities: bool = True) -> Dict[str, float]:
    r"""FLOPs of one training step (``train=True``: forward + backward, backward counted as
    twice the forward of every product whose inputs both need gradients) or one evaluation
    batch (``train=False``, forward only, the all-entity part counted once per batch as the
    shipped evaluator runs it), by component.

    ``kind="momok"`` (momok_pyg):

    * ``experts``: every modality's :math:`K` experts over all :math:`N` entities once,
      :math:`2 N d_{in} K d`, plus gate logits / noise / mixing (:math:`3 \cdot 2 N K d`);
    * ``fusion``: joint fusion of all :math:`N` candidates and the :math:`B` heads,
      :math:`2 H M n d^2 + 2 H M n d`, and of the :math:`2R` relation rows;
    * ``tucker_core``: :math:`2 U d_r d^2` per scored modality (one contraction per
      distinct relation :math:`U`); ``tucker_apply``: :math:`2 B d^2` per scored modality;
    * ``scoring``: the 1-N products :math:`2 B N d` per scored modality;
    * ``exid``: the CLUB networks (train only; upper bound and :math:`Q_\theta` step).

    ``kind="naive"``: ``experts`` runs for the :math:`B` heads, for the :math:`N`
    candidates and again for :math:`N` entities of the joint modality; ``tucker_core`` is
    contracted per sample, :math:`2 B d_r d^2`; the rest as above.

    ``all_entities=False`` leaves out the all-entity part (experts and fusion of the
    :math:`N` candidates), for evaluation batches that reuse a cache of it.
    """
    if kind not in ("momok", "naive"):
        raise ValueError(f"kind must be 'momok' or 'naive', got {kind!r}")
    bwd = 3.0 if train else 1.0  # forward + 2x forward for input and weight gradients
    M = len(in_dims)
    S = M + (1 if joint else 0)
    d, dr = dim, rel_dim
    n_all = N if all_entities else 0
    expert_rows = (B + 2 * n_all) if kind == "naive" else n_all
    per_row = sum(2 * di * K * d + 3 * 2 * K * d for di in in_dims.values())
    out = {"experts": bwd * expert_rows * per_row}
    fusion = 0.0
    if joint:
        def fuse(n: int, width: int) -> float:
            return 2.0 * H * M * n * width * d + 2.0 * H * M * n * d
        fusion = fuse(n_all, d) + fuse(B, d) + fuse(num_relations2, dr)
    out["fusion"] = bwd * fusion
    contractions = B if kind == "naive" else U
    out["tucker_core"] = bwd * S * 2.0 * contractions * dr * d * d
    out["tucker_apply"] = bwd * S * 2.0 * B * d * d
    out["scoring"] = bwd * S * 2.0 * B * N * d
    if exid and train and K >= 2:
        pairs = K * (K - 1) // 2
        # two MLPs (d -> d/2 -> d) per pair and modality; upper bound fwd+bwd, Q-step fwd+bwd
        mlp = 2 * (2.0 * B * d * (d // 2) * 2)
        # upper bound: forward + input gradients; Q-step: forward + weight gradients
        out["exid"] = (2.0 + 2.0) * pairs * M * mlp
    out["total"] = float(sum(out.values()))
    return out


def epoch_flops(kind: str, batches: Sequence[Tuple[int, int]], **kw) -> Dict[str, float]:
    r"""Sum of :func:`step_flops` over the ``(B, U)`` of every batch of an epoch."""
    total: Dict[str, float] = {}
    for B, U in batches:
        for k, v in step_flops(kind, B, U, **kw).items():
            total[k] = total.get(k, 0.0) + v
    return total


def eval_flops(kind: str, num_queries: int, batch_size: int, U_per_batch: Sequence[int],
               entities_once: bool = False, **kw) -> Dict[str, float]:
    r"""Forward FLOPs of ranking :obj:`num_queries` in batches of :obj:`batch_size`; the
    all-entity part (experts, candidate fusion) once per batch, or once in total with
    :obj:`entities_once` (``MoMoK.cached_entities``)."""
    total: Dict[str, float] = {}
    sizes = [min(batch_size, num_queries - s) for s in range(0, num_queries, batch_size)]
    for i, (B, U) in enumerate(zip(sizes, U_per_batch)):
        f = step_flops(kind, B, U, train=False, exid=False,
                       all_entities=not (entities_once and i > 0), **kw)
        for k, v in f.items():
            total[k] = total.get(k, 0.0) + v
    return total


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
    return TrainConfig.for_dataset("MKG-Y", **kw)


def _optimizers(model, config):
    try:
        from momok_pyg.training.loop import _optimizers as shipped
        return shipped(model, config)
    except ImportError:  # pragma: no cover - fallback with the same semantics
        params = list(model.kgc_parameters())
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        q_opt = (torch.optim.Adam(model.exid.parameters(), lr=config.lr)
                 if getattr(model, "exid", None) is not None else None)
        return opt, q_opt


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


def _flop_kw(data, dim: int) -> Dict[str, Any]:
    from momok_pyg.datasets.schema import STRUCTURE
    in_dims = {STRUCTURE: dim, **{m: FEATURE_DIMS[m] for m in FEATURE_DIMS}}
    return dict(N=int(data["entity"].num_nodes), dim=dim, rel_dim=dim, in_dims=in_dims,
                num_relations2=2 * int(data.num_relations))


def _eval_U(data, batch_size: int) -> List[int]:
    from momok_pyg.evaluate import query_tensors
    from momok_pyg.datasets import get_triples
    _, rel, _, _ = query_tensors(get_triples(data, "test"), int(data.num_relations))
    return [int(torch.unique(r).numel()) for r in rel.split(batch_size)]


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
    fkw = _flop_kw(data, spec["dim"])
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
        U = _eval_U(data, BATCH_SIZE)
        for key, fn, once in (("eval", shipped, True), ("eval_uncached", uncached, False)):
            model.eval()
            times, res = _time_eval(fn, device, repeats)
            out[f"{key}_seconds"] = times
            out[f"{key}_seconds_median"] = statistics.median(times)
            out[f"{key}_mrr"] = res["mrr"]
            ef = eval_flops("momok", res["count"], BATCH_SIZE, U, entities_once=once, **fkw)
            out[f"{key}_flops"] = ef
            out[f"{key}_achieved_gflops"] = ef["total"] / statistics.median(times) / 1e9
            if key == "eval":
                out["test_mrr"], out["test_hits@10"] = res["mrr"], res["hits@10"]
                out["eval_queries"] = res["count"]
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
    from momok_pyg.training import build_model, train_epoch
    from naive_reference import NaiveMoMoK, known_answers, naive_rank
    t_start = time.perf_counter()
    device, data, queries = _setup(spec)
    config = _config(spec)
    model = build_model(config, data).to(device)
    naive = NaiveMoMoK(model)
    rss_model = peak_rss_mb()
    rate32 = matmul_gflops(device)
    fkw = _flop_kw(data, spec["dim"])
    out: Dict[str, Any] = {"what": "naive reference (benchmarks/naive_reference.py)",
                           "dim": spec["dim"], "rss_after_model_mb": rss_model,
                           "matmul_gflops_fp32_worker": rate32}

    # 1) same scores and ranks as momok_pyg on real test queries (eval mode)
    n_eval = int(spec.get("eval_queries", BATCH_SIZE))
    fi = FilterIndex.from_data(data)
    ref = evaluate_link_prediction(model.predict, data, "test", batch_size=BATCH_SIZE,
                                   filter_index=fi, breakdowns=False, device=device,
                                   return_ranks=True)
    from momok_pyg.evaluate import query_tensors
    from momok_pyg.datasets import get_triples
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
    ef = eval_flops("naive", total_q, BATCH_SIZE, _eval_U(data, BATCH_SIZE), **fkw)
    out["eval_flops"] = ef
    out["eval_achieved_gflops"] = ef["total"] / est / 1e9

    # 3) training steps through the same train_epoch, extrapolated to an epoch
    optimizer, q_optimizer = _optimizers(naive, config)
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
    from momok_pyg.training import build_model, train_epoch
    from naive_reference import NaiveMoMoK
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
            optimizer, q_optimizer = _optimizers(net, config)
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


def run_worker(kind: str, spec: Dict[str, Any], inprocess: bool = False) -> Dict[str, Any]:
    r"""Runs one worker in a fresh Python process (its own peak RSS) and returns its dict."""
    if inprocess:
        return WORKERS[kind](spec)
    with tempfile.TemporaryDirectory(prefix="bench-momok-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--spec", str(spec_file), "--worker-out", str(out_file)]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"worker {kind} (dim {spec.get('dim')}) failed with exit code "
                               f"{proc.returncode}:\n{proc.stderr[-4000:]}")
        return json.loads(out_file.read_text())


# ------------------------------------------------------------------------------------------
# orchestration, verdicts, table
# ------------------------------------------------------------------------------------------
def _fmt(x: Optional[float], unit: str = "", digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}{unit}"


def verdicts(res: Dict[str, Any], quick: bool) -> List[Dict[str, Any]]:
    out = []
    rate = res["matmul_gflops"]["fp32"]
    for key, cfg in res["configs"].items():
        m = cfg.get("momok")
        if m is None:
            continue
        frac = m["achieved_gflops"] / rate
        if cfg["dim"] == 300:
            out.append({"target": "training d=300: counted FLOPs at >= 50% of the fp32 matmul "
                                  "rate", "value": round(frac, 3), "met": frac >= 0.5})
            out.append({"target": "training d=300: <= 60 s per epoch",
                        "value": round(m["epoch_seconds_median"], 2),
                        "met": m["epoch_seconds_median"] <= 60.0})
            out.append({"target": "peak RSS d=300 <= 3 GB (3072 MiB)",
                        "value": round(m["peak_rss_mb"], 1), "met": m["peak_rss_mb"] <= 3072})
            if "eval_seconds_median" in m:
                out.append({"target": "evaluation MKG-Y test, both directions, <= 2 s (fp32)",
                            "value": round(m["eval_seconds_median"], 3),
                            "met": m["eval_seconds_median"] <= 2.0})
    eq = res.get("equal_learning")
    if eq is not None:
        out.append({"target": "equal learning: MRR within noise of the naive reference",
                    "value": round(eq["mean_diff"], 4), "met": eq["within_noise"]})
    if quick:
        for v in out:
            v["note"] = "--quick: smoke mode, not the benchmark configuration"
    return out


def print_table(res: Dict[str, Any]) -> None:
    rate = res["matmul_gflops"]
    print(f"\nmomok_pyg benchmark ({res['env']['cpu']}, {res['env']['threads']} threads, torch "
          f"{res['env']['torch']}, device {res['env']['device']})")
    print(f"measured matmul rate [{'x'.join(map(str, MATMUL_SHAPE))}]: fp32 "
          f"{rate['fp32']:.1f} GFLOP/s, bf16 {_fmt(rate.get('bf16'), '', 1)} GFLOP/s")
    hdr = (f"{'config':<10}{'impl':<14}{'epoch s':>10}{'TFLOP':>8}{'GFLOP/s':>9}{'%mm':>6}"
           f"{'eval s':>9}{'RSS MiB':>9}{'MRR':>8}")
    print(hdr)
    print("-" * len(hdr))
    for key, cfg in res["configs"].items():
        for impl in ("momok", "momok_bf16", "naive"):
            r = cfg.get(impl)
            if r is None:
                continue
            ep = r.get("epoch_seconds_median", r.get("epoch_seconds_extrapolated"))
            ev = r.get("eval_seconds_median", r.get("eval_seconds_extrapolated"))
            star = "*" if impl == "naive" else ""
            print(f"{key:<10}{impl:<14}{_fmt(ep) + star:>10}{_fmt(r['epoch_tflop']):>8}"
                  f"{_fmt(r['achieved_gflops'], '', 1):>9}"
                  f"{_fmt(100 * r['achieved_gflops'] / rate['fp32'], '', 0):>6}"
                  f"{_fmt(ev, '', 3) + star:>9}{_fmt(r['peak_rss_mb'], '', 0):>9}"
                  f"{_fmt(r.get('test_mrr'), '', 4):>8}")
        rt = cfg.get("ratios", {})
        if rt:
            print(f"{'':<10}ratios: " + ", ".join(f"{k} {_fmt(v, 'x', 1)}" for k, v in rt.items()))
    print("(* extrapolated from a few steps / a subset of queries)")
    eq = res.get("equal_learning")
    if eq:
        print(f"equal learning ({eq['dataset']}, d={eq['dim']}, {eq['epochs']} epochs, "
              f"{len(eq['per_seed'])} seeds): momok MRR {eq['momok_mrr_mean']:.4f} +- "
              f"{_fmt(eq['momok_mrr_std'], '', 4)}, naive {eq['naive_mrr_mean']:.4f} +- "
              f"{_fmt(eq['naive_mrr_std'], '', 4)}, within noise: {eq['within_noise']}")
    print("targets:")
    for v in res["targets"]:
        print(f"  [{'MET ' if v['met'] else 'MISS' if v['met'] is False else ' ?  '}] "
              f"{v['target']}: {v['value']}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: d=32, 2 steps, 2000-entity subset (< 1 min)")
    p.add_argument("--epochs", type=int, default=3, help="momok_pyg epochs timed per config")
    p.add_argument("--dims", default="300,200", help="comma-separated embedding sizes")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/<name>.json)")
    p.add_argument("--name", default=None, help="result name (default: cpu/cuda + date)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true",
                   help="also time the opt-in bf16 autocast mode (speed-up and MRR)")
    p.add_argument("--naive-steps", type=int, default=2,
                   help="naive training steps timed (after 1 warm-up)")
    p.add_argument("--naive-queries", type=int, default=1024,
                   help="test queries ranked by the naive evaluator (extrapolated)")
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS momok_pyg training steps (top ops in the JSON)")
    p.add_argument("--equal-dim", type=int, default=64)
    p.add_argument("--equal-epochs", type=int, default=5)
    p.add_argument("--equal-seeds", default="0,1,2")
    p.add_argument("--equal-lr", type=float, default=None,
                   help="learning rate of the equal-learning check (default: MKG-Y preset)")
    p.add_argument("--equal-kwargs", default=None, metavar="JSON",
                   help='MoMoK keyword arguments of the equal-learning check, e.g. '
                        '\'{"hidden_dropout": 0.0}\' (both models)')
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-equal", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw-root", default=str(DEFAULT_RAW),
                   help="folder holding MKG-Y/ (default ../shared/mmkg)")
    p.add_argument("--root", default=None, help="dataset processing root (default: a temp dir)")
    p.add_argument("--inprocess", action="store_true",
                   help="run workers in this process (peak RSS then mixes)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # subprocess entry point
        spec = json.loads(Path(args.spec).read_text())
        result = WORKERS[args.worker](spec)
        tmp = Path(args.worker_out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, args.worker_out)
        return result

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    dims = [32] if args.quick else [int(x) for x in args.dims.split(",") if x.strip()]
    name = args.name or (f"{'quick-' if args.quick else ''}{device.type}-"
                         f"{time.strftime('%Y%m%d-%H%M%S')}")
    out_path = Path(args.out) if args.out else HERE / "results" / f"{name}.json"
    t_start = time.perf_counter()
    tmp_root = tempfile.TemporaryDirectory(prefix="bench-momok-data-") if args.root is None \
        else None
    root = args.root or tmp_root.name
    base = dict(raw_root=args.raw_root, root=root, seed=args.seed, device=str(device),
                threads=args.threads)
    if args.quick:
        base.update(max_entities=2000, steps=2)
    res: Dict[str, Any] = {
        "name": name, "command": " ".join([sys.executable] + sys.argv),
        "quick": args.quick, "env": environment(device),
        "data": {"dataset": "MKG-Y", "raw_root": args.raw_root,
                 "features": {m: f"random N(0,1), seeded ({d}-d, official shape)"
                              for m, d in FEATURE_DIMS.items()},
                 "subset": "entities < 2000" if args.quick else None},
        "config": {"dims": dims, "num_experts": NUM_EXPERTS, "batch_size": BATCH_SIZE,
                   "epochs": 1 if args.quick else args.epochs, "seed": args.seed,
                   "modalities": ["structure", "image", "text", "joint"]},
        "configs": {},
    }
    try:
        # the preprocessing (SHA-256 check, parsing) once, outside any timed worker
        load_mkgy(Path(args.raw_root), root, seed=args.seed,
                  max_entities=base.get("max_entities"))
        res["matmul_gflops"] = {"fp32": matmul_gflops(device)}
        if device.type == "cpu" or torch.cuda.is_bf16_supported():
            res["matmul_gflops"]["bf16"] = matmul_gflops(device, torch.bfloat16)
        for dim in dims:
            key = f"d{dim}"
            cfg: Dict[str, Any] = {"dim": dim}
            spec = dict(base, dim=dim, epochs=1 if args.quick else args.epochs,
                        eval_repeats=1 if args.quick else args.eval_repeats,
                        profile=args.profile)
            print(f"[{key}] momok_pyg ...", flush=True)
            cfg["momok"] = run_worker("momok", spec, args.inprocess)
            if args.bf16:
                print(f"[{key}] momok_pyg bf16 ...", flush=True)
                cfg["momok_bf16"] = run_worker("momok", dict(spec, bf16=True), args.inprocess)
            if not args.skip_naive:
                print(f"[{key}] naive reference ...", flush=True)
                cfg["naive"] = run_worker(
                    "naive", dict(spec, steps=2 if args.quick else args.naive_steps,
                                  eval_queries=256 if args.quick else args.naive_queries),
                    args.inprocess)
            m, n, b = cfg["momok"], cfg.get("naive"), cfg.get("momok_bf16")
            ratios = {}
            if n is not None:
                ratios["train naive/momok"] = (n["epoch_seconds_extrapolated"]
                                               / m["epoch_seconds_median"])
                if "eval_seconds_median" in m:
                    ratios["eval naive/momok"] = (n["eval_seconds_extrapolated"]
                                                  / m["eval_seconds_median"])
                ratios["counted FLOPs naive/momok"] = n["epoch_tflop"] / m["epoch_tflop"]
                ratios["peak RSS naive/momok"] = n["peak_rss_mb"] / m["peak_rss_mb"]
            if b is not None:
                ratios["bf16 speed-up"] = m["epoch_seconds_median"] / b["epoch_seconds_median"]
                if "test_mrr" in b:
                    cfg["bf16_vs_fp32"] = {
                        "epochs": spec["epochs"], "fp32_test_mrr": m.get("test_mrr"),
                        "bf16_test_mrr": b.get("test_mrr"),
                        "note": "same seed, same batches; MRR after the timed epochs"}
            cfg["ratios"] = ratios
            res["configs"][key] = cfg
        if not args.skip_equal:
            seeds = [int(s) for s in args.equal_seeds.split(",") if s.strip()]
            espec = dict(base, dim=16 if args.quick else args.equal_dim,
                         epochs=1 if args.quick else args.equal_epochs,
                         seeds=seeds[:1] if args.quick else seeds, lr=args.equal_lr,
                         model_kwargs=json.loads(args.equal_kwargs or "{}"))
            if not args.quick:
                espec.pop("steps", None)
            print("[equal learning] ...", flush=True)
            res["equal_learning"] = run_worker("equal", espec, args.inprocess)
        res["matmul_gflops"]["fp32_end"] = matmul_gflops(device)
    finally:
        if tmp_root is not None:
            tmp_root.cleanup()
    res["env"]["load_average_end"] = (list(os.getloadavg()) if hasattr(os, "getloadavg")
                                      else None)
    res["targets"] = verdicts(res, args.quick)
    res["bench_seconds"] = time.perf_counter() - t_start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, out_path)
    print_table(res)
    print(f"\nwritten: {out_path}")
    return res


if __name__ == "__main__":
    main()
