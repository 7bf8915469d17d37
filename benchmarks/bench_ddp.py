#!/usr/bin/env python
r"""Steps per second of data-parallel training: ``momok-pyg train`` with 1 process vs
``--nproc N`` processes on the same synthetic MMKG, global batch and seed, side by side.

Each configuration is one run of the CLI (``--nproc P --threads T``); the figure is the
number of global batches per epoch divided by the median epoch time (epochs after the first)
from the run's ``metrics.json``, and its final test MRR is kept beside it. On a CPU the fair
comparison gives every configuration the same cores (e.g. 1 process x 2 threads vs 2 x 1)::

    python benchmarks/bench_ddp.py --configs 1x2 2x1 --out benchmarks/results/ddp-cpu.json
    python benchmarks/bench_ddp.py --configs 1x1 2x1 --device cuda   # on a GPU machine
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, git_commit, markdown_table, write_result  # noqa: E402

from momok_pyg.reproduce.runner import median_epoch_seconds  # noqa: E402


def run(procs: int, threads: int, args: argparse.Namespace, root: Path,
        index: int = 0) -> Dict[str, Any]:
    # a fresh run directory per measurement: a repeated configuration must train again, not
    # resume the finished run of its first measurement
    out = root / f"{index}-p{procs}t{threads}"
    cmd = [sys.executable, "-m", "momok_pyg.cli", "train", "--synthetic",
           f"num_entities={args.entities}", f"num_triples={args.triples}",
           "--dim", str(args.dim), "--batch-size", str(args.batch_size), "--epochs",
           str(args.epochs), "--eval-every", str(args.epochs), "--patience", "0", "--threads",
           str(threads), "--seed", "0", "--no-progress", "--device", args.device,
           "--nproc", str(procs), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"procs": procs, "threads": threads, "ok": False,
                "error": proc.stderr[-800:]}
    m = json.loads((out / "metrics.json").read_text())
    epochs = m["timing"]["epoch_seconds"]
    median = median_epoch_seconds(epochs)
    batches = -(-m["num_train_queries"] // args.batch_size)
    return {"procs": procs, "threads": threads, "ok": True, "epoch_seconds": epochs,
            "epoch_seconds_median": median, "batches_per_epoch": batches,
            "steps_per_second": batches / median, "test_mrr": m["test"]["mrr"],
            "world_size": m.get("world_size", 1), "wall_seconds": time.perf_counter() - t0}


def markdown(res: Dict[str, Any]) -> str:
    r"""The measurements of a result JSON as a Markdown table (``--table`` prints it)."""
    rows = [[f"{r['procs']} x {r['threads']}", f"{r['steps_per_second']:.2f}",
             f"{r['epoch_seconds_median']:.2f}", f"{r.get('speedup_vs_first', float('nan')):.2f}x",
             f"{r['test_mrr']:.4f}"] if r["ok"] else
            [f"{r['procs']} x {r['threads']}", "failed", "—", "—", "—"] for r in res["results"]]
    return "\n".join(markdown_table(["processes x threads", "steps / s", "s / epoch (median)",
                                      "vs first row", "test MRR"], rows))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["1x2", "2x1"], metavar="PxT",
                   help="processes x threads per process")
    p.add_argument("--entities", type=int, default=3000)
    p.add_argument("--triples", type=int, default=60000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/ddp-cpu.json")
    p.add_argument("--table", metavar="JSON", default=None,
                   help="print the Markdown table of a written result JSON and exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return {}
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(args.configs):
            procs, threads = (int(x) for x in c.split("x"))
            r = run(procs, threads, args, Path(tmp), i)
            rows.append(r)
            if r["ok"]:
                print(f"{procs} process(es) x {threads} thread(s): "
                      f"{r['steps_per_second']:.2f} steps/s ({r['epoch_seconds_median']:.1f} s "
                      f"per epoch), test MRR {r['test_mrr']:.4f}", flush=True)
            else:
                print(f"{procs}x{threads}: FAILED {r['error'][-300:]}", flush=True)
    base = next((r for r in rows if r["ok"]), None)
    for r in rows:
        if r["ok"] and base is not None:
            r["speedup_vs_first"] = r["steps_per_second"] / base["steps_per_second"]
    res = {"command": "python benchmarks/bench_ddp.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "commit": git_commit(), "env": environment(torch.device(args.device)),
           "settings": {k: v for k, v in vars(args).items() if k != "out"}, "results": rows}
    return write_result(res, Path(args.out), lambda r: print(markdown(r)))


if __name__ == "__main__":
    main()
