r"""``momok-pyg`` command line: ``train``, ``evaluate``, ``predict``, ``reproduce`` and
``report``.

.. code-block:: bash

    momok-pyg train                                   # synthetic MMKG, offline, ~1-2 min on CPU
    momok-pyg train --dataset MKG-Y --features names --out runs/mkg-y
    momok-pyg train --dataset MKG-Y --no-exid --out runs/mkg-y-no-exid   # an ablation
    momok-pyg evaluate --run runs/mkg-y --modalities structure
    momok-pyg predict --run runs/mkg-y --head Gilles_Mbang_Ondo --relation playsFor -k 10
    momok-pyg reproduce table1 --raw-root ../shared/mmkg --datasets MKG-Y --models tucker
    momok-pyg report                                  # RESULTS.md section + results/figures
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from momok_pyg.training.config import MODELS, PRESETS, TrainConfig


def _bool_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"),
                        action=argparse.BooleanOptionalAction, default=None, help=help)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    r"""The training flags (every :class:`TrainConfig` field). ``None`` defaults mean "the
    dataset preset, else the :class:`TrainConfig` default"."""
    d = p.add_argument_group("data")
    d.add_argument("--config", default=None, metavar="JSON",
                   help="start from this config.json (a run's, or one written by "
                        "TrainConfig.save); the flags given override its values")
    d.add_argument("--dataset", default=None,
                   help="synthetic (default, offline), DB15K, MKG-W, MKG-Y, KVC16K or a "
                        "registered custom name")
    d.add_argument("--features", choices=("names", "official", "none"), default=None,
                   help="modality features of a benchmark: 'names' (text from entity names, "
                        "offline), 'official' (the paper's image/text features) or 'none'")
    d.add_argument("--root", default=None, help="dataset cache root (default: datasets)")
    d.add_argument("--raw-from", default=None,
                   help="folder with the raw benchmark files (no download)")
    d.add_argument("--synthetic", nargs="+", default=None, metavar="KEY=VALUE",
                   help="arguments of make_synthetic_mmkg, e.g. seed=1 num_entities=600")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=MODELS, default=None,
                   help="MoMoK (default), the structure-only TuckER baseline, or one of PyG's "
                        "KGE models (transe, distmult, complex, rotate) trained 1-N")
    m.add_argument("--protocol", choices=("paper", "official"), default=None,
                   help="paper (default): the method as the paper writes it; official: the "
                        "official code's loss, inference, gate input, ExID pairs and relation "
                        "size (flags given override it; see TrainConfig PROTOCOLS)")
    m.add_argument("--dim", type=int, default=None, help="entity embedding size")
    m.add_argument("--rel-dim", type=int, default=None,
                   help="relation embedding size (default: --dim)")
    m.add_argument("--experts", dest="num_experts", type=int, default=None,
                   help="experts per modality K (default 3)")
    m.add_argument("--loss", choices=("ce", "bce"), default=None,
                   help="1-N KGC loss: softmax cross-entropy (default) or binary "
                        "cross-entropy (TuckER's)")
    m.add_argument("--label-smoothing", type=float, default=None,
                   help="default: 0.1 for bce, 0 for ce")
    m.add_argument("--aggregate", choices=("sum", "mean_sigmoid"), default=None,
                   help="how per-modality scores are combined (default sum)")
    m.add_argument("--structure-encoder", choices=("rgcn", ), default=None,
                   help="a PyG graph encoder for the structure modality over the training "
                        "graph (two RGCNConv layers by default; --encoder-arg to change)")
    m.add_argument("--encoder-arg", dest="encoder_args", nargs="+", default=None,
                   metavar="KEY=VALUE", help="RGCNEncoder arguments, e.g. num_layers=1 "
                                             "num_bases=8")
    m.add_argument("--model-arg", dest="model_args", nargs="+", default=None,
                   metavar="KEY=VALUE",
                   help="further MoMoK/TuckER keyword arguments, e.g. finetune_features=false "
                        "feature_pool=256 input_dropout=0.2")
    a = p.add_argument_group("ablations (paper Table 2 / 8)")
    _bool_flag(a, "rel-temperature", "relational temperature in the expert gate "
                                     "(--no-rel-temperature: w/o it)")
    _bool_flag(a, "noise", "gate noise delta (--no-noise: w/o it)")
    a.add_argument("--fusion", choices=("attention", "mean"), default=None,
                   help="adaptive fusion of the experts ('mean' = w/o adaptive fusion)")
    _bool_flag(a, "joint", "joint training (--no-joint: every modality trained alone, "
                           "scores summed at inference)")
    _bool_flag(a, "exid", "expert information disentanglement (--no-exid: w/o ExID)")
    a.add_argument("--eval-modalities", nargs="+", default=None,
                   help="modalities whose scores are summed at evaluation, e.g. structure "
                        "or image text joint (default: all)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=None)
    o.add_argument("--batch-size", type=int, default=None)
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--lambda", dest="lambda_club", type=float, default=None,
                   help="weight of ExID's mutual-information upper bound (default 1e-4)")
    o.add_argument("--weight-decay", type=float, default=None)
    o.add_argument("--negatives", type=int, default=None, metavar="K",
                   help="sampled-candidate training: each batch against its answers and K "
                        "shared uniform negatives (log-Q corrected softmax); default: 1-N")
    o.add_argument("--q-views", choices=("forward", "updated"), default=None,
                   help="views for ExID's Q step: the step's own forward pass (default) or "
                        "recomputed after the model's update (the official train.py)")
    o.add_argument("--lr-decay", type=float, default=None,
                   help="multiply the learning rate by this after every epoch (original "
                        "TuckER's ExponentialLR; default 1.0 = constant)")
    _bool_flag(o, "optimizer-in-backward", "step Adam inside backward and free each gradient "
               "at once (default; same updates, less memory)")
    s = p.add_argument_group("selection")
    s.add_argument("--eval-every", type=int, default=None,
                   help="evaluate on valid every N epochs")
    s.add_argument("--patience", type=int, default=None,
                   help="early stop after N evaluations without a better valid MRR (0: never)")
    s.add_argument("--eval-batch-size", type=int, default=None)
    s.add_argument("--eval-candidate-chunk", type=int, default=None, metavar="C",
                   help="rank candidates in chunks of C entities: evaluation memory bounded "
                        "by eval batch x C, not by the entity count (same ranks)")
    s.add_argument("--tie", choices=("realistic", "optimistic", "pessimistic"), default=None)
    s.add_argument("--select-on", choices=("valid", "valid_not_in_train"), default=None,
                   help="valid MRR that selects the checkpoint: all valid triples (default) or "
                        "those not also in train (DB15K: 8,719 of 9,904 valid triples are)")
    s.add_argument("--track-test", action="store_true", default=None,
                   help="also rank test at every valid evaluation and keep its curve (for the "
                        "upstream-style max-over-evaluations report; never used to select)")
    r = p.add_argument_group("runtime")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--device", default=None, metavar="auto|cpu|cuda[:i]",
                   help="where to train and evaluate (default auto: CUDA when available)")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes (launches torchrun --nproc-per-node N; "
                        "gloo on CPU, NCCL on GPU)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (fix it for bitwise-reproducible runs)")
    r.add_argument("--bf16", action="store_true", default=None,
                   help="forward pass under torch.autocast(<device>, dtype=torch.bfloat16)")
    r.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="glibc mmap threshold fixed while training (default 1048576, lower "
                        "peak RSS; 0: glibc's growing default)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars")
    r.add_argument("--out", default=None,
                   help="run directory (default: runs/<dataset>-<model>-seed<seed>)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from OUT/last.pt if it exists (default)")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to run if OUT holds a checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="delete OUT's checkpoints and metrics and start afresh")


_NOT_CONFIG = {"command", "out", "resume", "overwrite", "synthetic", "model_args", "func",
               "encoder_args", "nproc", "argv",
               "config"}


def _parse_pairs(items: Sequence[str], flag: str) -> dict:
    r"""``["a=1", "b=false", "c=x"]`` -> ``{"a": 1, "b": False, "c": "x"}`` (JSON values,
    else strings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    r"""The :class:`TrainConfig` of parsed ``train`` arguments (dataset preset + flags)."""
    kw = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    if args.synthetic:
        kw["synthetic"] = _parse_pairs(args.synthetic, "--synthetic")
    if args.model_args:
        kw["model_kwargs"] = _parse_pairs(args.model_args, "--model-arg")
    if kw.get("structure_encoder") is not None:
        kw["structure_encoder"] = {"name": kw["structure_encoder"], **_parse_pairs(
            getattr(args, "encoder_args", None) or [], "--encoder-arg")}
    elif getattr(args, "encoder_args", None):
        raise ValueError("--encoder-arg needs --structure-encoder")
    glibc_default = kw.get("malloc_mmap_threshold") == 0
    if glibc_default:
        del kw["malloc_mmap_threshold"]
    if getattr(args, "config", None):
        base = TrainConfig.load(args.config).to_dict()
        base.update(kw)
        config = TrainConfig.from_dict(base)
    else:
        config = TrainConfig.for_dataset(kw.pop("dataset", None) or "synthetic", **kw)
    if glibc_default:
        config.malloc_mmap_threshold = None
    return config


def _without_nproc(argv: Sequence[str]) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from momok_pyg.training import train
    config = config_from_args(args)
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # N data-parallel processes through torchrun (momok_pyg.training.distributed)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(args.nproc), "-m", "momok_pyg.cli",
               *_without_nproc(args.argv)]
        return subprocess.run(cmd).returncode
    out = args.out or f"runs/{config.dataset}-{config.model}-seed{config.seed}"
    metrics = train(config, out, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    test = metrics["test"]
    # an ensemble (w/o joint training) has no epoch of its own: each member's best epoch
    best = metrics["best_epoch"] if "member_epochs" not in metrics else {
        m: e["best_epoch"] for m, e in metrics["member_epochs"].items()}
    print(json.dumps({"run": str(out), "best_epoch": best,
                      "test": {k: test[k] for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10")},
                      "per_modality_mrr": {m: v["mrr"] for m, v in
                                           metrics.get("per_modality", {}).items()},
                      "elapsed_seconds": round(metrics["timing"]["elapsed_seconds"], 2)},
                     indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from momok_pyg.training import evaluate_run
    out = evaluate_run(args.run, split=args.split, modalities=args.modalities,
                       breakdowns=args.breakdowns, which=args.checkpoint, progress=True,
                       filter_splits=args.filter, tie=args.tie)
    text = json.dumps(out, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from momok_pyg.inference import Predictor, format_result
    if (args.head is None) == (args.tail is None):
        raise SystemExit("predict: give exactly one of --head (tail prediction) or --tail "
                         "(head prediction)")
    predictor = Predictor.from_run(args.run, modalities=args.modalities)
    if args.head is not None:
        res = predictor.tails(args.head, args.relation, k=args.k, filtered=args.filtered)
    else:
        res = predictor.heads(args.relation, args.tail, k=args.k, filtered=args.filtered)
    print(json.dumps(res.to_dict(), indent=2) if args.json else format_result(res))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from momok_pyg import reproduce as R
    opts = R.Options(
        raw_root=args.raw_root, root=args.root, runs_dir=args.runs_dir,
        results_dir=args.results_dir, datasets=args.datasets,
        models=args.models or ("tucker", "momok"), seeds=args.seeds,
        grid=R.parse_grid(args.grid) if args.grid else None, max_epochs=args.max_epochs,
        eval_every=args.eval_every, patience=args.patience, threads=args.threads,
        features=args.features, ratios=args.ratios or R.ROBUSTNESS_RATIOS,
        cost_epochs=args.cost_epochs, device=args.device, only=args.runs,
        extra=_parse_pairs(args.set, "--set") if args.set else {})
    if args.list:
        for row in R.status(args.experiment, opts):
            print(R.describe(row))
        return 0
    # shell-quoted, so that the recorded command reruns as it ran (patterns stay patterns)
    command = shlex.join(["momok-pyg", *args.argv]) if args.command_line is None else \
        args.command_line
    # SIGTERM unwinds like Ctrl-C: the runner stops its training child and frees the lock
    signal.signal(signal.SIGTERM, _exit_on_signal)
    R.run_experiment(args.experiment, opts, command=command, limit=args.limit)
    return 0


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _cmd_report(args: argparse.Namespace) -> int:
    from momok_pyg.report import write_report
    path = write_report(args.results_dir, args.output, figures_dir=args.figures_dir)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from momok_pyg.datasets.schema import SPLITS
    parser = argparse.ArgumentParser(
        prog="momok-pyg",
        description="MoMoK (Mixture of Modality Knowledge experts) for multi-modal knowledge "
                    "graph completion on PyTorch Geometric.")
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train, select on valid, report test metrics",
                       description="Presets: " + "; ".join(
                           f"{k}: {v}" for k, v in PRESETS.items()))
    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="re-evaluate a run's best checkpoint")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--split", choices=("test", "valid"), default="test")
    e.add_argument("--modalities", nargs="+", default=None,
                   help="score with these modalities only (default: the run's)")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--filter", nargs="*", choices=SPLITS, default=list(SPLITS),
                   help="splits whose triples are removed from the candidates (default: all; "
                        "none given: raw ranks)")
    e.add_argument("--tie", choices=("realistic", "optimistic", "pessimistic"), default=None,
                   help="rank of a target tied with other candidates (default: the run's)")
    e.add_argument("--no-breakdowns", dest="breakdowns", action="store_false")
    e.add_argument("--output", default=None, help="also write the JSON here")
    e.set_defaults(func=_cmd_evaluate)

    q = sub.add_parser("predict", help="top-k answers of one query, with explanations")
    q.add_argument("--run", required=True, help="run directory")
    q.add_argument("--head", default=None, help="head entity (name or id): rank tails")
    q.add_argument("--tail", default=None, help="tail entity (name or id): rank heads")
    q.add_argument("--relation", required=True, help="relation (name or id)")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--unfiltered", dest="filtered", action="store_false",
                   help="keep known training answers in the ranking")
    q.add_argument("--modalities", nargs="+", default=None)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_cmd_predict)

    from momok_pyg.reproduce import EXPERIMENTS
    r = sub.add_parser("reproduce", help="run one of the paper's experiments (resumable)",
                       description="Runs the pending runs of an experiment, one JSON per run "
                                   "under RESULTS_DIR/<experiment>/ (see momok_pyg.reproduce). "
                                   "Run it again to continue; several processes may share "
                                   "the work.")
    r.add_argument("experiment", choices=sorted(EXPERIMENTS))
    r.add_argument("--raw-root", default=None,
                   help="folder with the raw benchmarks (DB15K/ MKG-W/ MKG-Y/ Kuai16K/), "
                        "e.g. ../shared/mmkg; default: download into --root")
    r.add_argument("--root", default="datasets", help="dataset cache root")
    r.add_argument("--runs-dir", default="runs/reproduce",
                   help="run directories (checkpoints; not committed)")
    r.add_argument("--results-dir", default="results", help="result JSON files")
    r.add_argument("--datasets", nargs="+", default=None)
    r.add_argument("--models", nargs="+", choices=MODELS, default=None,
                   help="models of table1 / robustness / cost (tucker, momok) or of "
                        "baselines (transe, distmult, complex, rotate)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="TuckER grid at the first seed, e.g. loss=ce lr=0.001,0.003 "
                        "(default: softmax CE at 1e-3 and 3e-3)")
    r.add_argument("--max-epochs", type=int, default=300)
    r.add_argument("--eval-every", type=int, default=5)
    r.add_argument("--patience", type=int, default=6,
                   help="valid evaluations without improvement before stopping")
    r.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (run two processes on two cores)")
    r.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:i]",
                   help="device of every run (default auto: CUDA when available); "
                        "recorded in each result JSON")
    r.add_argument("--features", choices=("names", "official", "none"), default=None,
                   help="MoMoK's features (default: official if present, else names)")
    r.add_argument("--ratios", nargs="+", type=float, default=None,
                   help="robustness ratios (default 0.2 0.4 0.6 0.8)")
    r.add_argument("--cost-epochs", type=int, default=2)
    r.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                   help="TrainConfig overrides for every run, e.g. bf16=true")
    r.add_argument("--limit", type=int, default=None, help="stop after N finished runs")
    r.add_argument("--runs", nargs="+", default=None, metavar="PATTERN",
                   help="only the runs whose name matches one of these shell patterns, "
                        "e.g. 'tucker-DB15K-*' (see --list for the names)")
    r.add_argument("--list", action="store_true", help="print the runs and their state")
    r.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    r.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("report", help="write RESULTS-style tables and PNG plots from the "
                                      "result JSON files")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--output", default="RESULTS.md",
                   help="Markdown file; the report replaces the text between its markers")
    p.add_argument("--figures-dir", default=None,
                   help="where the PNG plots go (default: <results-dir>/figures)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Entry point of ``momok-pyg``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"momok-pyg {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
