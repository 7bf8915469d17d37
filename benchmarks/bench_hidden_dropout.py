"""Micro-benchmark of the Tucker hidden dropout alone: one modality's relation-grouped product
``x_b (W_g(b) ⊙ D_b)`` with its backward pass, at a training step's shape (MKG-Y: batch 1024,
28 relation groups incl. reciprocals, d = 300 by default), for every way momok_pyg can run it:

* ``sample_fused``: the default, counter-based masks inside three torch.compile kernels;
* ``sample_eager``: the same masks drawn eagerly and kept as booleans (no compiler /
  ``MOMOK_PYG_COMPILE=0``);
* ``moments``: the grouped product with gradient noise (``hidden_dropout_mode="moments"``);
* ``no_dropout``: the grouped product alone (evaluation), the floor.

Prints a table and writes a JSON with the median seconds per forward + backward and the
ratios to ``sample_fused``, all measured in one process, interleaved round by round.

    python benchmarks/bench_hidden_dropout.py --out benchmarks/results/hidden-dropout-cpu.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, write_result  # noqa: E402

from momok_pyg.nn import gradient_noise_matmul, per_sample_dropout_matmul  # noqa: E402
from momok_pyg.nn.kernels.grouped import relation_grouped_matmul, sort_groups  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--groups", type=int, default=28)
    p.add_argument("--p", type=float, default=0.4, help="hidden dropout rate")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/hidden-dropout-cpu.json")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    B, d, U = args.batch, args.dim, args.groups
    x = torch.randn(B, d, requires_grad=True)
    mats = torch.randn(U, d, d, requires_grad=True)
    group = torch.randint(0, U, (B, ))
    grouping = sort_groups(group, U)
    g = torch.randn(B, d)
    impls = {
        "sample_fused": lambda: per_sample_dropout_matmul(x, group, mats, args.p,
                                                          grouping=grouping, compile=True),
        "sample_eager": lambda: per_sample_dropout_matmul(x, group, mats, args.p,
                                                          grouping=grouping, compile=False),
        "moments": lambda: gradient_noise_matmul(x, group, mats, args.p, grouping),
        "no_dropout": lambda: relation_grouped_matmul(x, group, mats, "loop", grouping),
    }

    def step(fn) -> float:
        x.grad = mats.grad = None
        t0 = time.perf_counter()
        fn().backward(g)
        return time.perf_counter() - t0

    t_start = time.perf_counter()
    for fn in impls.values():  # warm-up (compiles the fused kernels)
        step(fn)
    times = {k: [] for k in impls}
    for _ in range(args.rounds):
        for k, fn in impls.items():
            times[k].append(step(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "env": environment(torch.device("cpu")),
        "config": {"batch": B, "dim": d, "groups": U, "p": args.p, "rounds": args.rounds,
                   "seed": args.seed},
        "what": "seconds per forward + backward of one modality's hidden-dropout product",
        "seconds": times, "median_seconds": med,
        "ratio_to_sample_fused": {k: v / med["sample_fused"] for k, v in med.items()},
        "bench_seconds": time.perf_counter() - t_start,
    }

    def print_table(r) -> None:
        print(f"hidden dropout, one modality, fwd+bwd (B={B}, d={d}, U={U}, p={args.p}; "
              f"{torch.get_num_threads()} threads)")
        for k in impls:
            print(f"  {k:<14} {r['median_seconds'][k] * 1e3:8.1f} ms   "
                  f"x{r['ratio_to_sample_fused'][k]:.2f}")

    write_result(res, Path(args.out), print_table)


if __name__ == "__main__":
    main()
