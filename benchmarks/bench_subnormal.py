#!/usr/bin/env python
r"""What subnormal floats in the 1-N gradient cost on a CPU, with and without the loss's flush.

The ``"ce"`` gradient of a 1-N step is :math:`\mathbf{G} = c\,\mathrm{softmax}(\mathbf{S}) / B
- \tilde{\mathbf{Y}}`. Once training has separated the scores, most softmax values of a row
lie below the smallest normal float (:math:`1.2 \cdot 10^{-38}`, reached when a score is ~87
below the row's best), and x86 CPUs process such *subnormal* inputs to a matrix product
many times slower. :func:`momok_pyg.nn.loss.flush_subnormal_` sets them to zero before the
gradient products. This script times both ways, side by side in one process:

* ``kernel``: :func:`~momok_pyg.nn.loss.linear_one_to_n_loss` (scores, loss and the two
  gradient products) on random queries whose scores have standard deviation ``--score-std``
  (1: an untrained model, no subnormals; 20-30: a trained one), flush on and off, with the
  fraction of :math:`\mathbf{G}` that is subnormal without the flush;
* ``step`` (with ``--run DIR``): full training steps (:func:`~momok_pyg.training.step.train_step`)
  of the model, optimizer state and config of a run's ``last.pt``, flush on and off, and of
  the same configuration freshly initialised (the speed the run started at), flush on and off.

``off`` runs the loss as it was before the flush (:func:`unflushed_ce_loss_and_grad_`, and
``flush_subnormal_`` as the identity), for the measurement only::

    python benchmarks/bench_subnormal.py
    python benchmarks/bench_subnormal.py --run runs/reproduce/table1/momok-MKG-W-names-seed0
    python benchmarks/bench_subnormal.py --table benchmarks/results/subnormal.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, environment, markdown_table, write_result  # noqa: E402

import momok_pyg.nn.loss as loss_module  # noqa: E402


def unflushed_ce_loss_and_grad_(score: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                                value: torch.Tensor, eps: float):
    r""":func:`momok_pyg.nn.loss._ce_loss_and_grad_` before the flush (commit 87b2001): the
    softmax part of the gradient keeps its subnormal values."""
    B, N = score.shape
    coef, weight, linear = loss_module._ce_terms(score, row, col, value, eps)
    top = score.amax(dim=1, keepdim=True)
    z = score.sub_(top).exp_().sum(dim=1)
    loss = (coef * (top.squeeze(1) + z.log()) - linear).mean()
    grad = score.mul_((coef / (B * z)).unsqueeze(1))
    return loss, loss_module._answer_terms_(grad, row, col, value, "ce", eps, weight)


@contextlib.contextmanager
def flush(on: bool) -> Iterator[None]:
    r"""The 1-N loss as it is (:obj:`on`) or as it was before the flush."""
    originals = (loss_module.flush_subnormal_, loss_module._ce_loss_and_grad_)
    if not on:
        loss_module.flush_subnormal_ = lambda x: x
        loss_module._ce_loss_and_grad_ = unflushed_ce_loss_and_grad_
    try:
        yield
    finally:
        loss_module.flush_subnormal_, loss_module._ce_loss_and_grad_ = originals


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    r"""Median wall milliseconds of :obj:`fn` over :obj:`repeats` calls after :obj:`warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def subnormal_fraction(x: torch.Tensor) -> float:
    tiny = torch.finfo(x.dtype).tiny
    return float(((x.abs() < tiny) & (x != 0)).float().mean())


def kernel(batch: int, num_entities: int, dim: int, score_std: float, repeats: int,
           seed: int = 0) -> Dict[str, Any]:
    r"""Times :func:`~momok_pyg.nn.loss.linear_one_to_n_loss` (forward, which computes the
    gradient products, and backward) with the flush on and off, on scores of standard
    deviation :obj:`score_std`, one answer per query."""
    g = torch.Generator().manual_seed(seed)
    cand = torch.randn(num_entities, dim, generator=g)
    query = torch.randn(batch, dim, generator=g) * (score_std / dim ** 0.5)
    answers = torch.randint(num_entities, (batch,), generator=g)
    target = torch.sparse_coo_tensor(torch.stack([torch.arange(batch), answers]),
                                     torch.ones(batch), (batch, num_entities),
                                     check_invariants=True)
    q, c = query.requires_grad_(), cand.requires_grad_()

    def step() -> None:
        torch.autograd.grad(loss_module.linear_one_to_n_loss(q, c, target), (q, c))

    row, col, value = loss_module.sparse_rows(target)
    out: Dict[str, Any] = {"batch": batch, "num_entities": num_entities, "dim": dim,
                           "score_std": score_std}
    with torch.no_grad(), flush(False):
        _, grad = loss_module._ce_loss_and_grad_(query @ cand.t(), row, col, value, 0.0)
    out["subnormal_fraction_unflushed"] = subnormal_fraction(grad)
    for on in (True, False):
        with flush(on):
            out["ms_flush_on" if on else "ms_flush_off"] = median_ms(step, repeats)
    out["off_vs_on"] = out["ms_flush_off"] / out["ms_flush_on"]
    return out


def training_steps(run: Path, steps: int) -> Dict[str, Any]:
    r"""Median seconds of :obj:`steps` training steps (after two untimed ones) of the run in
    :obj:`run` at its ``last.pt`` and freshly initialised, each with the flush on and off."""
    from momok_pyg.datasets import get_triples
    from momok_pyg.training.batching import OneToNQueries, epoch_generator
    from momok_pyg.training.config import TrainConfig
    from momok_pyg.training.loop import build_model, load_data
    from momok_pyg.training.step import build_optimizers, train_step

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(ckpt["config"])
    data = load_data(config)
    queries = OneToNQueries(get_triples(data, "train"), data["entity"].num_nodes,
                            data.num_relations)

    def timed(trained: bool, on: bool) -> float:
        torch.manual_seed(config.seed)
        model = build_model(config, data)
        optimizer, q_optimizer = build_optimizers(model, config)
        if trained:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if q_optimizer is not None and ckpt.get("q_optimizer") is not None:
                q_optimizer.load_state_dict(ckpt["q_optimizer"])
        model.train()
        gen = epoch_generator(config.seed, ckpt["state"]["epoch"] + 1)
        times: List[float] = []
        with flush(on):
            for i, (ent, rel, idx) in enumerate(queries.batches(config.batch_size, gen)):
                if i >= steps + 2:
                    break
                t0 = time.perf_counter()
                train_step(model, queries, ent, rel, idx, optimizer, q_optimizer, config, gen)
                times.append(time.perf_counter() - t0)
        if len(times) < 3:
            raise ValueError(f"{run}: an epoch has {len(times)} batches, need at least 3 "
                             "(two untimed)")
        return float(statistics.median(times[2:]))

    out = {"run": str(run), "epochs_trained": ckpt["state"]["epoch"], "dataset": config.dataset,
           "model": config.model, "dim": config.dim, "batch_size": config.batch_size,
           "steps": steps,
           "trained_flush_on_s": timed(True, True), "trained_flush_off_s": timed(True, False),
           "fresh_s": timed(False, True), "fresh_flush_off_s": timed(False, False)}
    out["off_vs_on"] = out["trained_flush_off_s"] / out["trained_flush_on_s"]
    out["trained_on_vs_fresh"] = out["trained_flush_on_s"] / out["fresh_s"]
    return out


def print_table(result: Dict[str, Any]) -> None:
    rows = [[k["score_std"], f"{100 * k['subnormal_fraction_unflushed']:.1f} %",
             f"{k['ms_flush_on']:.1f}", f"{k['ms_flush_off']:.1f}", f"{k['off_vs_on']:.2f}x"]
            for k in result["kernel"]]
    print(f"kernel: B = {result['kernel'][0]['batch']}, N = "
          f"{result['kernel'][0]['num_entities']}, d = {result['kernel'][0]['dim']}, "
          f"{result['env']['threads']} thread(s)")
    print("\n".join(markdown_table(["score std", "G subnormal (no flush)", "ms flush on",
                                    "ms flush off", "off / on"], rows)))
    s = result.get("step")
    if s:
        print(f"\ntraining step of {s['run']} after {s['epochs_trained']} epochs ({s['dataset']}, "
              f"{s['model']}, d = {s['dim']}, batch {s['batch_size']}, median of {s['steps']})")
        print("\n".join(markdown_table(
            ["model", "flush on", "flush off", "off / on"],
            [["trained", f"{s['trained_flush_on_s']:.3f} s", f"{s['trained_flush_off_s']:.3f} s",
              f"{s['off_vs_on']:.2f}x"],
             ["fresh", f"{s['fresh_s']:.3f} s", f"{s['fresh_flush_off_s']:.3f} s",
              f"{s['fresh_flush_off_s'] / s['fresh_s']:.2f}x"]])))
        print(f"trained / fresh, flush on: {s['trained_on_vs_fresh']:.2f}x")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--entities", type=int, default=15000)
    p.add_argument("--dim", type=int, default=200)
    p.add_argument("--score-std", type=float, nargs="+", default=[1.0, 10.0, 20.0, 30.0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--run", default=None, help="a run directory with last.pt (step timing)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/subnormal.json)")
    p.add_argument("--table", default=None, metavar="JSON", help="print a written result")
    args = p.parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print_table(result)
        return result
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: Dict[str, Any] = {
        "benchmark": "bench_subnormal", "command": " ".join(["python", *sys.argv]),
        "env": environment(torch.device("cpu")),
        "kernel": [kernel(args.batch, args.entities, args.dim, std, args.repeats)
                   for std in args.score_std]}
    if args.run:
        result["step"] = training_steps(Path(args.run), args.steps)
    result["wall_seconds"] = time.perf_counter() - t0
    out = Path(args.out or REPO / "benchmarks" / "results" / "subnormal.json")
    return write_result(result, out, print_table)


if __name__ == "__main__":
    main()
