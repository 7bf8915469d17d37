#!/usr/bin/env python
r"""Scaling benchmark: MoMoK on synthetic MMKGs of 10k -> 1M entities, 1-N vs sampled-candidate
training, full vs chunked evaluation.

For every entity count :math:`N` and mode, one subprocess (its own peak RSS, an address-space
cap so that a configuration that does not fit fails with a MemoryError instead of waking the
OOM killer) builds ``make_synthetic_mmkg(num_entities=N, num_triples=5 N)``, times
``--steps`` training steps after one warm-up step and extrapolates them to an epoch, then ranks
``--eval-queries`` test queries (the full ``[B, N]`` score matrix for ``1-N``, candidate chunks
of ``--chunk`` entities for ``sampled``) and extrapolates to the test split. Modes:

* ``1-N``: every step scores all :math:`N` entities (the paper's training);
* ``sampled``: every step scores the batch's answers and ``--negatives`` shared uniform
  negatives (log-Q corrected, :func:`momok_pyg.training.batching.sample_candidates`);
  evaluation in chunks (:meth:`momok_pyg.metrics.FilteredRankMetric.update_chunked`).

Writes a JSON (``--out``) and a log-log plot next to it, and prints a table::

    python benchmarks/bench_scaling.py --sizes 10000 100000 1000000 \
        --out benchmarks/results/scaling-cpu.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, git_commit, markdown_table, peak_rss_mb, write_result  # noqa: E402

MODES = ("1-N", "sampled")


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    r"""One (N, mode) measurement, in this process."""
    from momok_pyg.datasets import get_triples
    from momok_pyg.datasets.synthetic import make_synthetic_mmkg
    from momok_pyg.evaluate import evaluate_link_prediction
    from momok_pyg.training import TrainConfig
    from momok_pyg.training.batching import OneToNQueries, epoch_generator
    from momok_pyg.training.loop import build_model, scorer
    from momok_pyg.training.step import build_optimizers, train_step
    torch.set_num_threads(spec["threads"])
    n = spec["num_entities"]
    t0 = time.perf_counter()
    data = make_synthetic_mmkg(num_entities=n, num_triples=5 * n, num_groups=50,
                               num_attributes=20, seed=0)
    out: Dict[str, Any] = {"data_seconds": time.perf_counter() - t0}
    sampled = spec["mode"] == "sampled"
    config = TrainConfig(synthetic={}, dim=spec["dim"], batch_size=spec["batch_size"],
                         negatives=spec["negatives"] if sampled else None, progress=False,
                         eval_candidate_chunk=spec["chunk"] if sampled else None,
                         eval_batch_size=spec["batch_size"], threads=spec["threads"])
    model = build_model(config, data).train()
    queries = OneToNQueries(get_triples(data, "train"), n, data.num_relations)
    opt, q_opt = build_optimizers(model, config)
    gen = epoch_generator(0, 1)
    times: List[float] = []
    for ent, rel, idx in queries.batches(config.batch_size, gen):
        t1 = time.perf_counter()
        train_step(model, queries, ent, rel, idx, opt, q_opt, config, gen)
        times.append(time.perf_counter() - t1)
        if len(times) == spec["steps"] + 1:  # + the warm-up step
            break
    step = sorted(times[1:])[len(times[1:]) // 2]
    out.update(step_seconds=step, steps_timed=len(times) - 1,
               batches_per_epoch=queries.num_batches(config.batch_size),
               epoch_seconds=step * queries.num_batches(config.batch_size),
               train_peak_rss_mb=peak_rss_mb())
    test = get_triples(data, "test")[:spec["eval_queries"] // 2]
    small = data.clone()
    small["entity", "relation", "entity"].test_edge_index = test[:, [0, 2]].t()
    small["entity", "relation", "entity"].test_edge_type = test[:, 1]
    model.eval()
    t2 = time.perf_counter()
    with model.cached_entities():
        evaluate_link_prediction(scorer(model, reuse_output=not sampled), small, "test",
                                 batch_size=config.eval_batch_size, breakdowns=False,
                                 candidate_chunk=config.eval_candidate_chunk)
    ev = time.perf_counter() - t2
    full = get_triples(data, "test").size(0)
    out.update(eval_seconds=ev, eval_queries=2 * test.size(0),
               eval_seconds_test_split=ev * full / max(test.size(0), 1),
               peak_rss_mb=peak_rss_mb(), num_train_triples=int(get_triples(data, "train")
                                                                .size(0)))
    return out


def run_one(spec: Dict[str, Any], cap_gb: float) -> Dict[str, Any]:
    r"""Runs :func:`worker` in a subprocess under an address-space cap of ``cap_gb``."""
    def limit() -> None:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, preexec_fn=limit)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-600:]
        fits = "MemoryError" not in tail and "alloc" not in tail.lower()
        return {**spec, "ok": False, "wall_seconds": wall, "error": tail.strip(),
                "out_of_memory": not fits}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**spec, **res, "ok": True, "wall_seconds": wall}


def plot(results: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for mode, marker in zip(MODES, "os"):
        rows = [r for r in results if r["mode"] == mode and r["ok"]]
        if not rows:
            continue
        xs = [r["num_entities"] for r in rows]
        for ax, key, label in zip(axes, ("epoch_seconds", "eval_seconds_test_split",
                                         "peak_rss_mb"),
                                  ("s per epoch", "s to rank the test split",
                                   "peak RSS (MB; dashed: training only)")):
            line, = ax.plot(xs, [r[key] for r in rows], marker=marker, label=mode)
            if key == "peak_rss_mb":
                ax.plot(xs, [r["train_peak_rss_mb"] for r in rows], ls="--", marker=marker,
                        color=line.get_color(), alpha=0.7)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("entities N")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    for r in results:
        if not r["ok"]:
            axes[2].axvline(r["num_entities"], color="red", ls=":", alpha=0.6)
    axes[0].legend()
    fig.suptitle("MoMoK on synthetic MMKGs: 1-N vs sampled candidates (red: did not fit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_fit(results: List[Dict[str, Any]], mode: str = "1-N",
               budget_gib: float = 24.0) -> Optional[Dict[str, float]]:
    r"""A least-squares line through peak RSS vs :math:`N` of :obj:`mode`'s measurements that
    fitted (the two largest sizes or more) and the :math:`N` where it reaches
    :obj:`budget_gib`: where that mode stops fitting the machine's memory, extrapolated."""
    rows = sorted((r["num_entities"], r["peak_rss_mb"]) for r in results
                  if r["mode"] == mode and r["ok"])[-3:]
    if len(rows) < 2:
        return None
    n = torch.tensor([float(x) for x, _ in rows], dtype=torch.float64)
    mb = torch.tensor([float(y) for _, y in rows], dtype=torch.float64)
    a = torch.stack([n, torch.ones_like(n)], 1)
    slope, icpt = torch.linalg.lstsq(a, mb.unsqueeze(1)).solution.squeeze(1).tolist()
    return {"mb_per_entity": slope, "intercept_mb": icpt, "budget_gib": budget_gib,
            "fit_sizes": [x for x, _ in rows],
            "entities_at_budget": (budget_gib * 1024 - icpt) / slope if slope > 0 else None}


def markdown(res: Dict[str, Any]) -> str:
    r"""The measurements of a result JSON as a Markdown table (``--table`` prints it)."""
    rows = []
    for r in res["results"]:
        if r["ok"]:
            rows.append([f"{r['num_entities']:,}", r["mode"], f"{r['step_seconds']:.2f}",
                         f"{r['epoch_seconds']:,.0f}", f"{r['eval_seconds_test_split']:,.0f}",
                         f"{r['peak_rss_mb']:,.0f}"])
        else:
            why = "out of memory" if r.get("out_of_memory") else "error"
            rows.append([f"{r['num_entities']:,}", r["mode"], f"did not fit: {why} "
                         f"(address-space cap {res['cap_gb']} GiB)", "—", "—", "—"])
    lines = markdown_table(["entities N", "mode", "s / step", "s / epoch (extrapolated)",
                            "s to rank the test split (extrapolated)", "peak RSS (MB)"], rows)
    fit = memory_fit(res["results"])
    if fit is not None and fit["entities_at_budget"] is not None:
        lines += ["", f"1-N peak RSS grows by {1024 * fit['mb_per_entity']:.1f} KB per entity "
                  f"(least squares over N = {', '.join(f'{x:,}' for x in fit['fit_sizes'])}); "
                  f"the line reaches {fit['budget_gib']:g} GiB at N ≈ "
                  f"{fit['entities_at_budget']:,.0f} (extrapolated)."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eval-queries", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap-gb", type=float, default=22.0,
                   help="address-space cap per measurement (the machine has 24 GiB)")
    p.add_argument("--out", default="benchmarks/results/scaling-cpu.json")
    p.add_argument("--table", metavar="JSON", default=None,
                   help="print the Markdown table of a written result JSON, redraw its plot "
                        "and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table:  # the table, and the plot redrawn next to the JSON
        res = json.loads(Path(args.table).read_text())
        print(markdown(res))
        if any(r["ok"] for r in res["results"]):
            plot(res["results"], Path(args.table).with_suffix(".png"))
        return {}
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    results = []
    for n in args.sizes:
        for mode in args.modes:
            spec = dict(num_entities=n, mode=mode, dim=args.dim, batch_size=args.batch_size,
                        negatives=args.negatives, chunk=args.chunk, steps=args.steps,
                        eval_queries=args.eval_queries, threads=args.threads)
            r = run_one(spec, args.cap_gb)
            results.append(r)
            if r["ok"]:
                print(f"N={n:>9,} {mode:8s} step {r['step_seconds']:7.3f} s  epoch "
                      f"{r['epoch_seconds']:9.1f} s  eval(test) "
                      f"{r['eval_seconds_test_split']:8.1f} s  peak RSS "
                      f"{r['peak_rss_mb']:8.0f} MB", flush=True)
            else:
                print(f"N={n:>9,} {mode:8s} FAILED "
                      f"({'out of memory' if r['out_of_memory'] else 'error'}): "
                      f"{r['error'][-200:]}", flush=True)
    out = Path(args.out)
    res = {"command": "python benchmarks/bench_scaling.py " + " ".join(
               a for a in (argv if argv is not None else sys.argv[1:])),
           "commit": git_commit(), "env": environment(torch.device("cpu")),
           "cap_gb": args.cap_gb, "results": results,
           "one_to_n_memory_fit": memory_fit(results)}
    write_result(res, out, lambda r: print(markdown(r)))
    if any(r["ok"] for r in results):
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    else:
        print("no measurement succeeded: no plot")
    return res


if __name__ == "__main__":
    main()
