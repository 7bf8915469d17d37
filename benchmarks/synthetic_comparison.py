"""MoMoK vs the structure-only TuckER baseline on the synthetic MMKG, several seeds.

Each (model, seed) is one ``momok_pyg.training.train`` run with the synthetic preset (the same
as ``momok-pyg train`` / ``momok-pyg train --model tucker`` with ``--seed S``): valid-based
selection, test metrics of the best-valid checkpoint. Writes one JSON with every run's test
metrics (overall and on triples touching entities unseen in training) and the mean/std over
seeds, and prints a table.

    python benchmarks/synthetic_comparison.py --seeds 0 1 2 --out results/synthetic_comparison.json
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import momok_pyg
from momok_pyg.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, git_commit, write_result  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["momok", "tucker"])
    parser.add_argument("--out", default="results/synthetic_comparison.json")
    args = parser.parse_args(argv)

    runs, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for seed in args.seeds:
                config = TrainConfig.for_dataset("synthetic", model=model, seed=seed,
                                                 progress=False)
                t0 = time.perf_counter()
                m = train(config, os.path.join(tmp, f"{model}-{seed}"), log=lambda s: None)
                runs.append({
                    "model": model, "seed": seed, "best_epoch": m["best_epoch"],
                    "wall_seconds": time.perf_counter() - t0,
                    "test": {k: m["test"][k] for k in ("mrr", "mr", "hits@1", "hits@3",
                                                       "hits@10", "count")},
                    "test_unseen_entity": {k: m["test"]["unseen_entity"][k]
                                           for k in ("mrr", "hits@10", "count")},
                    "config": m["config"],
                })
                print(f"{model:7s} seed {seed}: test MRR {m['test']['mrr']:.4f} "
                      f"(unseen-entity {m['test']['unseen_entity']['mrr']:.4f}), "
                      f"best epoch {m['best_epoch']}, {runs[-1]['wall_seconds']:.0f} s")
    for model in args.models:
        rows = [r for r in runs if r["model"] == model]
        summary[model] = {}
        for key, get in (("test_mrr", lambda r: r["test"]["mrr"]),
                         ("test_hits@10", lambda r: r["test"]["hits@10"]),
                         ("unseen_entity_mrr", lambda r: r["test_unseen_entity"]["mrr"])):
            vals = [get(r) for r in rows]
            summary[model][key] = {"mean": statistics.mean(vals),
                                   "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    result = {
        "command": "python benchmarks/synthetic_comparison.py " + " ".join(
            ["--seeds", *map(str, args.seeds), "--models", *args.models, "--out", args.out]),
        "momok_pyg_version": momok_pyg.__version__, "git_commit": git_commit(),
        "env": environment(torch.device("cpu")), "runs": runs, "summary": summary,
    }

    def print_table(r: dict) -> None:
        print(f"\n{'model':8s} {'test MRR':>16s} {'Hits@10':>16s} {'unseen-entity MRR':>20s}")
        for model, s in r["summary"].items():
            print(f"{model:8s} {s['test_mrr']['mean']:.4f} ± {s['test_mrr']['std']:.4f}   "
                  f"{s['test_hits@10']['mean']:.4f} ± {s['test_hits@10']['std']:.4f}   "
                  f"{s['unseen_entity_mrr']['mean']:.4f} ± {s['unseen_entity_mrr']['std']:.4f}")

    return write_result(result, Path(args.out), print_table)


if __name__ == "__main__":
    main()
