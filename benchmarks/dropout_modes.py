"""Longer-horizon check of the Tucker hidden-dropout modes: same seeds, same presets, only
``hidden_dropout_mode`` differs (by default the fast ``"moments"`` against the official
per-sample masks ``"sample"``, the library default; ``"gaussian"`` / ``"relation"`` may be
added).

Each (mode, seed) is one ``momok_pyg.training.train`` run of a dataset preset (the same as
``momok-pyg train --dataset D --seed S``), here with ``--epochs`` (default: three times the
preset's) and no early stopping, so that every run has the whole validation curve. The runs
go to ``--jobs`` worker processes of one thread each. Writes one JSON with every run's
validation curve and best-valid test metrics, the per-mode mean/std, and the paired
difference of every mode against the first one, judged by the criterion of
``bench_momok.py``'s equal-learning check; prints a table.

    python benchmarks/dropout_modes.py --dataset synthetic --modes moments sample \\
        --seeds 0 1 2 --epochs 48 --out results/dropout_modes_synthetic.json
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import momok_pyg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, git_commit, write_result  # noqa: E402


def _config(spec: Dict[str, Any]):
    from momok_pyg.training import TrainConfig
    return TrainConfig.for_dataset(
        spec["dataset"], seed=spec["seed"], epochs=spec["epochs"], patience=0,
        eval_every=spec["eval_every"], dim=spec["dim"], lr=spec["lr"], threads=1,
        progress=False, raw_from=spec["raw_from"], features=spec["features"],
        root=spec["root"], model_kwargs={"hidden_dropout_mode": spec["mode"]})


def _run(spec: Dict[str, Any]) -> Dict[str, Any]:
    from momok_pyg.training import train
    config = _config(spec)
    t0 = time.perf_counter()
    m = train(config, os.path.join(spec["tmp"], f"{spec['mode']}-{spec['seed']}"),
              log=lambda s: None)
    return {
        "mode": spec["mode"], "seed": spec["seed"], "best_epoch": m["best_epoch"],
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": m["timing"]["train_seconds"],
        "valid_curve": [{"epoch": r["epoch"], "mrr": r["mrr"], "hits@10": r["hits@10"]}
                        for r in m["valid_curve"]],
        "train_loss": [r["loss"] for r in m["train_curve"]],
        "test": {k: m["test"][k] for k in ("mrr", "hits@1", "hits@3", "hits@10", "count")},
        "config": m["config"],
    }


def _sd(v: List[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else float("nan")


def compare(runs: List[Dict[str, Any]], modes: List[str]) -> Dict[str, Any]:
    r"""Per-mode mean/std of the best-valid test MRR and of the validation MRR at every
    evaluated epoch, and each mode's paired difference (same seed) against ``modes[0]``."""
    by = {m: {r["seed"]: r for r in runs if r["mode"] == m} for m in modes}
    summary: Dict[str, Any] = {}
    for mode in modes:
        rows = list(by[mode].values())
        mrr = [r["test"]["mrr"] for r in rows]
        epochs = [c["epoch"] for c in rows[0]["valid_curve"]]
        curve = [statistics.mean(r["valid_curve"][i]["mrr"] for r in rows)
                 for i in range(len(epochs))]
        summary[mode] = {"test_mrr_mean": statistics.mean(mrr), "test_mrr_std": _sd(mrr),
                         "test_hits@10_mean": statistics.mean(r["test"]["hits@10"]
                                                              for r in rows),
                         "best_epoch_mean": statistics.mean(r["best_epoch"] for r in rows),
                         "valid_epochs": epochs, "valid_mrr_mean": curve,
                         "train_seconds_mean": statistics.mean(r["train_seconds"]
                                                               for r in rows)}
    ref = modes[0]
    for mode in modes[1:]:
        seeds = sorted(set(by[mode]) & set(by[ref]))
        diffs = [by[ref][s]["test"]["mrr"] - by[mode][s]["test"]["mrr"] for s in seeds]
        noise = math.sqrt((summary[ref]["test_mrr_std"] ** 2
                           + summary[mode]["test_mrr_std"] ** 2) / 2)
        se = _sd(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        mean_diff = statistics.mean(diffs)
        summary[f"{ref}_minus_{mode}"] = {
            "seeds": seeds, "test_mrr_diff_mean": mean_diff, "seed_noise_std": noise,
            "diff_std_error": se,
            "within_noise": (bool(abs(mean_diff) <= 2 * max(noise, se))
                             if len(diffs) > 1 else None),
            "criterion": "|mean difference| <= 2 x max(seed-to-seed std, s.e. of the paired "
                         "differences)"}
    return summary


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    from momok_pyg.training import PRESETS, canonical_dataset, load_data
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--modes", nargs="+", default=["moments", "sample"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="default: three times the preset's epochs")
    p.add_argument("--eval-every", type=int, default=None, help="default: the preset's")
    p.add_argument("--dim", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--raw-from", default=None, help="raw files of a real benchmark")
    p.add_argument("--features", default=None, help="'names', 'official' or 'none'")
    p.add_argument("--root", default=None, help="dataset root (default: a temporary folder)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--out", default="results/dropout_modes.json")
    args = p.parse_args(argv)
    from momok_pyg.nn.tucker import HIDDEN_DROPOUT_MODES
    for mode in args.modes:
        if mode not in HIDDEN_DROPOUT_MODES:
            p.error(f"unknown mode {mode!r}; expected some of {HIDDEN_DROPOUT_MODES}")
    preset = PRESETS.get(canonical_dataset(args.dataset), {})
    epochs = args.epochs if args.epochs is not None else 3 * preset.get("epochs", 40)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        specs = [dict(dataset=args.dataset, mode=mode, seed=seed, epochs=epochs,
                      eval_every=args.eval_every, dim=args.dim, lr=args.lr,
                      raw_from=args.raw_from, features=args.features,
                      root=args.root or os.path.join(tmp, "data"), tmp=tmp)
                 for seed in args.seeds for mode in args.modes]
        if args.jobs > 1 and canonical_dataset(args.dataset) != "synthetic":
            load_data(_config(specs[0]))  # process the dataset once; the workers then read it
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            runs = []
            for r in pool.map(_run, specs):
                runs.append(r)
                print(f"{r['mode']:9s} seed {r['seed']}: test MRR {r['test']['mrr']:.4f} "
                      f"(best epoch {r['best_epoch']}, {r['train_seconds']:.0f} s training)",
                      flush=True)
    summary = compare(runs, args.modes)
    result = {
        "what": "hidden-dropout modes: same seeds and preset, only hidden_dropout_mode differs",
        "command": "python benchmarks/dropout_modes.py " + " ".join(
            ["--dataset", args.dataset, "--modes", *args.modes, "--seeds",
             *map(str, args.seeds), "--epochs", str(epochs)]
            + (["--eval-every", str(args.eval_every)] if args.eval_every else [])
            + (["--dim", str(args.dim)] if args.dim else [])
            + (["--lr", str(args.lr)] if args.lr else [])
            + (["--features", args.features] if args.features else [])
            + (["--raw-from", args.raw_from] if args.raw_from else [])
            + (["--root", args.root] if args.root else [])
            + ["--jobs", str(args.jobs), "--out", args.out]),
        "momok_pyg_version": momok_pyg.__version__, "git_commit": git_commit(),
        "env": environment(torch.device("cpu")), "wall_seconds": time.perf_counter() - t0,
        "runs": runs, "summary": summary,
    }

    def print_table(r: Dict[str, Any]) -> None:
        print(f"\n{'mode':10s} {'test MRR':>18s} {'Hits@10':>8s} {'best epoch':>11s} "
              f"{'train s':>8s}")
        for mode in args.modes:
            s = r["summary"][mode]
            print(f"{mode:10s} {s['test_mrr_mean']:.4f} ± {s['test_mrr_std']:.4f}   "
                  f"{s['test_hits@10_mean']:.4f} {s['best_epoch_mean']:11.1f} "
                  f"{s['train_seconds_mean']:8.0f}")
        for key, s in r["summary"].items():
            if "_minus_" in key:
                print(f"{key}: {s['test_mrr_diff_mean']:+.4f} (noise {s['seed_noise_std']:.4f}, "
                      f"s.e. {s['diff_std_error']:.4f}) -> within noise: {s['within_noise']}")

    return write_result(result, Path(args.out), print_table)


if __name__ == "__main__":
    main()
