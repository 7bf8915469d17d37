#!/usr/bin/env python
r"""How to spend the cores of a small machine: one training run with all of them, or one
one-thread run per core side by side.

For one configuration of ``momok-pyg reproduce cost`` (a dataset and a model, with the
reproduction's settings), trains ``--epochs`` epochs (one valid evaluation at the end, no
early stop) in two modes, one after the other:

* ``alone``: one ``momok-pyg train`` process with ``--cores`` torch threads;
* ``side_by_side``: ``--cores`` processes with one torch thread each, started together.

Each process reports its seconds per epoch (``metrics.json``); the median after the first
epoch (which pays for compilation and allocator warm-up) is its *latency*. The *throughput*
of a mode is the number of epochs per hour all its processes complete together:

.. math::
    \text{throughput} = \sum_{p} \frac{3600}{\operatorname{median}_e t_{p,e}}.

The ratio ``side_by_side / alone`` says whether running several experiments at once
finishes more work than running them in turn (> 1) or less (< 1); the latency says how long
one run takes, which decides whether it fits in a working session. The machine should be
otherwise idle (the JSON records the load average before each mode)::

    python benchmarks/bench_parallel.py --dataset MKG-Y --model momok
    python benchmarks/bench_parallel.py --table benchmarks/results/parallel-MKG-Y-momok.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_RAW, REPO, environment, markdown_table, write_result  # noqa: E402

from momok_pyg.cli import _parse_pairs  # noqa: E402
from momok_pyg.reproduce.plans import Options, cost  # noqa: E402
from momok_pyg.reproduce.runner import child_command, median_epoch_seconds  # noqa: E402

MODES = ("alone", "side_by_side")


def latency(epoch_seconds: Sequence[float]) -> float:
    r"""A process's seconds per epoch (:func:`~momok_pyg.reproduce.runner.median_epoch_seconds`);
    raises if no epoch was timed."""
    median = median_epoch_seconds(epoch_seconds)
    if median is None:
        raise ValueError("no epoch was timed")
    return median


def throughput(latencies: Sequence[float]) -> float:
    r"""Epochs per hour that processes of these latencies complete together."""
    return float(sum(3600.0 / t for t in latencies))


def summarise(modes: Dict[str, List[List[float]]]) -> Dict[str, Any]:
    r"""Latency per process, throughput per mode and the ratio ``side_by_side / alone``
    from the epoch times of each process of each mode."""
    out: Dict[str, Any] = {}
    for mode, processes in modes.items():
        lat = [latency(p) for p in processes]
        out[mode] = {"epoch_seconds": processes, "latency_seconds": lat,
                     "epochs_per_hour": throughput(lat)}
    if all(m in out for m in MODES):
        out["side_by_side_vs_alone"] = (out["side_by_side"]["epochs_per_hour"]
                                        / out["alone"]["epochs_per_hour"])
    return out


def _spec(args: argparse.Namespace):
    opts = Options(raw_root=args.raw_root, root=args.root, datasets=[args.dataset],
                   models=[args.model], cost_epochs=args.epochs, threads=1,
                   device="cpu", features=args.features,
                   extra=_parse_pairs(args.set, "--set"))
    (spec,) = cost(opts, {})
    return spec


def run_mode(spec, processes: int, threads: int, work: Path) -> List[List[float]]:
    r"""Trains :obj:`processes` copies of :obj:`spec` at once, :obj:`threads` torch threads
    each; returns the epoch times of each (raises with the log's tail if one fails)."""
    procs = []
    for i in range(processes):
        out = work / f"p{i}"
        out.mkdir(parents=True)
        cmd = child_command(dataclasses.replace(
            spec, config=dataclasses.replace(spec.config, threads=threads)), out)
        log = open(out / "train.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO),
                      log, out))
    times = []
    for proc, log, out in procs:
        code = proc.wait()
        log.close()
        if code != 0:
            tail = (out / "train.log").read_text().splitlines()[-15:]
            raise RuntimeError(f"training in {out} failed (exit {code}):\n" + "\n".join(tail))
        metrics = json.loads((out / "metrics.json").read_text())
        times.append(metrics["timing"]["epoch_seconds"])
    return times


def print_table(result: Dict[str, Any]) -> None:
    s = result["summary"]
    rows = []
    for mode in MODES:
        if mode not in s:
            continue
        lat = s[mode]["latency_seconds"]
        rows.append([mode, len(lat), result["threads"][mode],
                     " / ".join(f"{t:.1f}" for t in lat), f"{s[mode]['epochs_per_hour']:.0f}"])
    print("\n".join(markdown_table(
        ["mode", "processes", "threads each", "s / epoch (each)", "epochs / hour"], rows)))
    if "side_by_side_vs_alone" in s:
        print(f"\nside by side / alone: {s['side_by_side_vs_alone']:.2f}x the epochs per hour")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="MKG-Y")
    p.add_argument("--model", default="momok", choices=["momok", "tucker"])
    p.add_argument("--features", default=None, help="MoMoK's features (default as reproduce)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per process (>= 2)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--raw-root", default=str(DEFAULT_RAW))
    p.add_argument("--root", default="datasets", help="dataset cache root")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides, e.g. dim=32 (smoke runs)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/parallel-<dataset>-<model>.json)")
    p.add_argument("--table", default=None, metavar="JSON", help="print a written result")
    args = p.parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print_table(result)
        return result
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not timed)")
    if args.cores < 2:
        p.error("--cores must be at least 2")
    spec = _spec(args)
    out = Path(args.out or REPO / "benchmarks" / "results"
               / f"parallel-{spec.config.dataset}-{args.model}.json")
    threads = {"alone": args.cores, "side_by_side": 1}
    counts = {"alone": 1, "side_by_side": args.cores}
    modes: Dict[str, List[List[float]]] = {}
    load: Dict[str, List[float]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
        for mode in MODES:  # "alone" first: it also processes the dataset once
            load[mode] = list(os.getloadavg())
            modes[mode] = run_mode(spec, counts[mode], threads[mode], Path(tmp) / mode)
    result = {
        "benchmark": "bench_parallel", "command": " ".join(["python", *sys.argv]),
        "dataset": spec.config.dataset, "model": args.model, "features": spec.config.features,
        "epochs": args.epochs, "cores": args.cores, "threads": threads,
        "config": spec.config.to_dict(),
        "env": environment(torch.device("cpu")), "load_average_before": load,
        "wall_seconds": time.perf_counter() - t0, "summary": summarise(modes),
    }
    return write_result(result, out, print_table)


if __name__ == "__main__":
    main()
