#!/usr/bin/env python
r"""Performance benchmark of momok_pyg against a naive reference (GitHub issue "Performance").

One run times, on the same data and configuration,

* **momok_pyg** as shipped: :class:`momok_pyg.nn.MoMoK` built by
  :func:`momok_pyg.training.build_model`, trained by :func:`momok_pyg.training.train_epoch`
  on :class:`momok_pyg.training.OneToNQueries` 1-N batches, evaluated by
  :func:`momok_pyg.evaluate.evaluate_link_prediction`;
* the **naive reference** (``momok_pyg/nn/reference.py``): the paper's equations written
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_common import (  # noqa: E402
    BATCH_SIZE,
    DEFAULT_RAW,
    FEATURE_DIMS,
    MATMUL_SHAPE,
    NUM_EXPERTS,
    REPO,
    SQUARE_SHAPE,
    environment,
    load_mkgy,
    matmul_gflops,
    write_result,
)
from bench_workers import WORKERS  # noqa: E402

from momok_pyg.nn.tucker import HIDDEN_DROPOUT_MODES  # noqa: E402

#: what the ``--malloc-variant`` run changes: ``TrainConfig.malloc_mmap_threshold=None``,
#: glibc's default allocator (its mmap threshold adapts upwards to 32 MiB, after which freed
#: blocks of up to 32 MiB stay in the heap and count in RSS), or a fixed threshold of the
#: given bytes, instead of the shipped fixed 1 MiB threshold
MALLOC_VARIANT = "TrainConfig(malloc_mmap_threshold=None): glibc's default (growing) threshold"


def malloc_variant(value: str) -> Optional[int]:
    r"""``--malloc-variant``'s value: ``"default"`` (glibc's growing threshold, ``None``) or a
    fixed threshold in bytes."""
    if value == "default":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'default' or a number of bytes, got "
                                         f"{value!r}") from None


def malloc_variant_name(threshold: Optional[int]) -> str:
    if threshold is None:
        return MALLOC_VARIANT
    return (f"TrainConfig(malloc_mmap_threshold={threshold}): a fixed "
            f"{threshold / 2**20:g} MiB threshold")


def run_worker(kind: str, spec: Dict[str, Any], inprocess: bool = False,
               env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    r"""Runs one worker in a fresh Python process (its own peak RSS; ``env`` added to its
    environment) and returns its dict."""
    if inprocess:
        if env:
            raise ValueError("an environment variant needs its own process (no --inprocess)")
        return WORKERS[kind](spec)
    with tempfile.TemporaryDirectory(prefix="bench-momok-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--spec", str(spec_file), "--worker-out", str(out_file)]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True,
                              env=dict(os.environ, **(env or {})))
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
    for cfg in res["configs"].values():
        m = cfg.get("momok")
        if m is None:
            continue
        if cfg["dim"] == 300:
            for impl in sorted(k for k in cfg if k.startswith("momok") and k != "momok_malloc"):
                r = cfg[impl]
                what = "" if impl == "momok" else f" [{impl}]"
                frac = r["achieved_gflops"] / rate
                out.append({"target": f"training d=300{what}: counted FLOPs at >= 50% of the "
                                      f"fp32 matmul rate (1-N scoring shape)",
                            "value": round(frac, 3), "met": frac >= 0.5})
                square = res["matmul_gflops"].get("fp32_square")
                if square:
                    frac = r["achieved_gflops"] / square
                    out.append({"target": f"training d=300{what}: counted FLOPs at >= 50% of "
                                          f"the fp32 matmul rate (square product)",
                                "value": round(frac, 3), "met": frac >= 0.5})
                out.append({"target": f"training d=300{what}: <= 60 s per epoch",
                            "value": round(r["epoch_seconds_median"], 2),
                            "met": r["epoch_seconds_median"] <= 60.0})
            out.append({"target": "peak RSS d=300 <= 3 GB (3072 MiB)",
                        "value": round(m["peak_rss_mb"], 1), "met": m["peak_rss_mb"] <= 3072})
            mm = cfg.get("momok_malloc")
            if mm is not None:
                out.append({"target": f"peak RSS d=300 <= 3 GB (3072 MiB) with "
                                      f"{mm['malloc_variant']}",
                            "value": round(mm["peak_rss_mb"], 1),
                            "met": mm["peak_rss_mb"] <= 3072,
                            "epoch_seconds": round(mm["epoch_seconds_median"], 2)})
            if "eval_seconds_median" in m:
                out.append({"target": "evaluation MKG-Y test, both directions, <= 2 s (fp32)",
                            "value": round(m["eval_seconds_median"], 3),
                            "met": m["eval_seconds_median"] <= 2.0})
    for key in sorted(k for k in res if k.startswith("equal_learning")):
        eq = res[key]
        what = ("shipped defaults" if key == "equal_learning" else
                f"hidden_dropout_mode={key[len('equal_learning_'):]!r}")
        if eq:
            out.append({"target": f"equal learning ({what}): MRR within noise of the naive "
                                  f"reference (value: mean MRR difference)",
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
          f"{rate['fp32']:.1f} GFLOP/s, bf16 {_fmt(rate.get('bf16'), '', 1)} GFLOP/s; "
          f"[{'x'.join(map(str, SQUARE_SHAPE))}]: fp32 "
          f"{_fmt(rate.get('fp32_square'), '', 1)} GFLOP/s")
    hdr = (f"{'config':<10}{'impl':<22}{'epoch s':>10}{'TFLOP':>8}{'GFLOP/s':>9}{'%mm':>6}"
           f"{'%sq':>6}{'eval s':>9}{'RSS MiB':>9}{'MRR':>8}")
    square = rate.get("fp32_square")
    print(hdr)
    print("-" * len(hdr))
    for key, cfg in res["configs"].items():
        impls = [k for k in cfg if k.startswith("momok")] + ["naive"]
        for impl in impls:
            r = cfg.get(impl)
            if not isinstance(r, dict) or "epoch_tflop" not in r:
                continue
            ep = r.get("epoch_seconds_median", r.get("epoch_seconds_extrapolated"))
            ev = r.get("eval_seconds_median", r.get("eval_seconds_extrapolated"))
            star = "*" if impl == "naive" else ""
            print(f"{key:<10}{impl:<22}{_fmt(ep) + star:>10}{_fmt(r['epoch_tflop']):>8}"
                  f"{_fmt(r['achieved_gflops'], '', 1):>9}"
                  f"{_fmt(100 * r['achieved_gflops'] / rate['fp32'], '', 0):>6}"
                  f"{_fmt(100 * r['achieved_gflops'] / square if square else None, '', 0):>6}"
                  f"{_fmt(ev, '', 3) + star:>9}{_fmt(r['peak_rss_mb'], '', 0):>9}"
                  f"{_fmt(r.get('test_mrr'), '', 4):>8}")
        rt = cfg.get("ratios", {})
        if rt:
            print(f"{'':<10}ratios: " + ", ".join(f"{k} {_fmt(v, 'x', 1)}" for k, v in rt.items()))
    print("(* extrapolated from a few steps / a subset of queries)")
    for key in sorted(k for k in res if k.startswith("equal_learning")):
        eq = res.get(key)
        if not eq:
            continue
        print(f"{key} ({eq['dataset']}, d={eq['dim']}, {eq['epochs']} epochs, "
              f"{len(eq['per_seed'])} seeds, {eq['model_kwargs'] or 'defaults'}): momok MRR "
              f"{eq['momok_mrr_mean']:.4f} +- {_fmt(eq['momok_mrr_std'], '', 4)}, naive "
              f"{eq['naive_mrr_mean']:.4f} +- {_fmt(eq['naive_mrr_std'], '', 4)}, within "
              f"noise: {eq['within_noise']}")
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
    p.add_argument("--dropout-variant", default=None, choices=HIDDEN_DROPOUT_MODES,
                   metavar="MODE",
                   help="also time the first dim (fp32, and bf16 with --bf16) and run the "
                        "equal-learning check with TuckerScorer(hidden_dropout_mode=MODE), "
                        "e.g. 'sample' or 'gaussian'")
    p.add_argument("--malloc-variant", nargs="?", const="default", default=False,
                   type=malloc_variant, metavar="BYTES",
                   help="also time the first dim with glibc's default allocator "
                        "(TrainConfig(malloc_mmap_threshold=None)), or with a fixed mmap "
                        "threshold of BYTES (e.g. 8388608)")
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
        res["matmul_gflops"] = {"fp32": matmul_gflops(device),
                                "fp32_square": matmul_gflops(device, shape=SQUARE_SHAPE,
                                                             repeats=3)}
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
            if args.malloc_variant is not False and dim == dims[0]:
                what = malloc_variant_name(args.malloc_variant)
                print(f"[{key}] momok_pyg with {what} ...", flush=True)
                cfg["momok_malloc"] = run_worker(
                    "momok", dict(spec, eval=False, malloc_mmap_threshold=args.malloc_variant),
                    args.inprocess)
                cfg["momok_malloc"]["malloc_variant"] = what
            if args.dropout_variant and dim == dims[0]:
                mode = args.dropout_variant
                vspec = dict(spec, model_kwargs={"hidden_dropout_mode": mode})
                print(f"[{key}] momok_pyg hidden_dropout_mode={mode!r} ...", flush=True)
                cfg[f"momok_{mode}"] = run_worker("momok", vspec, args.inprocess)
                if args.bf16:
                    print(f"[{key}] momok_pyg bf16 hidden_dropout_mode={mode!r} ...",
                          flush=True)
                    cfg[f"momok_bf16_{mode}"] = run_worker("momok", dict(vspec, bf16=True),
                                                           args.inprocess)
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
            for impl in [k for k in cfg if k.startswith("momok_") and k != "momok_malloc"
                         and k != "momok_bf16"]:
                base_impl = "momok_bf16" if impl.startswith("momok_bf16_") else "momok"
                if base_impl in cfg:
                    ratios[f"{impl} speed-up over {base_impl}"] = (
                        cfg[base_impl]["epoch_seconds_median"]
                        / cfg[impl]["epoch_seconds_median"])
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
            if args.dropout_variant:
                mode = args.dropout_variant
                print(f"[equal learning, hidden_dropout_mode={mode!r}] ...", flush=True)
                res[f"equal_learning_{mode}"] = run_worker(
                    "equal", dict(espec, model_kwargs=dict(espec["model_kwargs"],
                                                           hidden_dropout_mode=mode)),
                    args.inprocess)
        res["matmul_gflops"]["fp32_end"] = matmul_gflops(device)
    finally:
        if tmp_root is not None:
            tmp_root.cleanup()
    res["env"]["load_average_end"] = (list(os.getloadavg()) if hasattr(os, "getloadavg")
                                      else None)
    res["targets"] = verdicts(res, args.quick)
    res["bench_seconds"] = time.perf_counter() - t_start
    return write_result(res, out_path, print_table)


if __name__ == "__main__":
    main()
