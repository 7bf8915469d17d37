r"""Table 2 / 8: the ablation rows of MoMoK on one benchmark and the recipe tables that set
MoMoK against TuckER under one training recipe at a time."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from momok_pyg.report import formatting as fmt
from momok_pyg.report.plots import plot_curves
from momok_pyg.report.results import (
    AllResults,
    exid_share,
    run_config,
    seed_group,
)
from momok_pyg.report.sections.table1 import METRICS, selected_tucker


def section_ablations(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                      everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Table 2 / 8: ablations", ""]
    every_seed = results
    # one run per row (its first seed); the recipe rows' other seeds feed the recipe tables
    first: Dict[Any, Dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: (r["meta"].get("seed") or 0, r["name"])):
        first.setdefault(r["meta"].get("row"), r)
    results = list(first.values())
    full = first.get("full")
    rows, others = [], set()
    for r in sorted(results, key=lambda r: (r["meta"].get("row") != "full", r["name"])):
        if full is None or r is full:
            d = ""
        elif _model(r) != _model(full):
            d = "—"  # another model: not an ablation of the full one
            others.add(_model(r))
        else:
            d = f"{100 * (r['test']['mrr'] - full['test']['mrr']):+.2f}"
        rows.append([r["meta"].get("row"), *(fmt.pct(r["test"][k]) for k in METRICS), d,
                     fmt.epochs(r)])
    if full is not None:
        for m, v in full.get("per_modality", {}).items():
            rows.append([f"full, scored by {m} only", *(fmt.pct(v.get(k)) for k in METRICS),
                         f"{100 * (v['mrr'] - full['test']['mrr']):+.2f}", fmt.epochs(full)])
    out += fmt.table(["row", "MRR", "Hits@1", "Hits@3", "Hits@10", "Δ MRR vs full", "epochs"],
                     rows)
    if others:
        out += ["", f"Δ is — for a row of another model than the full one "
                f"({', '.join(sorted(others))}): it is no ablation of MoMoK; the recipe "
                "table below compares it with its own twin."]
    ordered = sorted(results, key=lambda r: r["name"])
    switches = [f"`{r['meta']['row']}`: " + ", ".join(f"{k} = {v}" for k, v in
                                                      r["meta"]["switch"].items())
                for r in ordered if r["meta"].get("switch")]
    if switches:
        out += ["", "Each row changes the full configuration by: " + "; ".join(switches) + "."]
    shares = [(r["meta"]["row"], exid_share(r)) for r in ordered]
    shares = [(row, v) for row, v in shares if v is not None]
    if shares:
        out += ["", "Weight of ExID in the training objective at the best epoch (λ × CLUB bound "
                "/ KGC loss, epoch means; rows whose result keeps its training curve): "
                + ", ".join(f"{row} {100 * v:.3g}%" for row, v in shares) + "."]
    out += _recipe_table(every_seed, everything)
    out += _matched_recipe_table(full, every_seed, everything)
    out += fmt.seed_note(full, everything, "full")
    fig = plot_curves(sorted(results, key=lambda r: r["name"]), fig_dir / "ablations.png",
                      "ablations: valid / test MRR")
    out += ["", f"![ablation curves]({rel / fig.name})", ""] + fmt.provenance(every_seed)
    return out


def _model(r: Dict[str, Any]) -> str:
    return (r.get("config") or {}).get("model", "momok")


def _matched_recipe_table(full: Optional[Dict[str, Any]], results: List[Dict[str, Any]],
                          everything: Optional[AllResults]) -> List[str]:
    r"""MoMoK against TuckER under one recipe at a time, over seeds: MoMoK's recipe (the
    full row and its other seeds, which are Table 1's MoMoK runs, against the
    ``tucker-momok-recipe`` row's seeds) and TuckER's (the ``tucker-recipe`` row's seeds
    against Table 1's TuckER row of the dataset: its grid point selected on valid, every
    seed). Table 1 itself sets each model's own recipe against the other's."""
    if full is None:
        return []
    ds = full["meta"].get("dataset")

    def row_runs(row: str) -> List[Dict[str, Any]]:
        return sorted((r for r in results if r["meta"].get("row") == row),
                      key=lambda r: r["name"])

    table1 = [r for r in (everything or {}).get("table1", [])
              if r["meta"].get("dataset") == ds]
    _, tucker_row = selected_tucker(table1)
    lines = [("MoMoK's", seed_group(full, everything), row_runs("tucker-momok-recipe")),
             ("TuckER's", row_runs("tucker-recipe"),
              sorted(tucker_row, key=lambda r: r["name"]))]
    rows = []
    for recipe, momok, tucker in lines:
        if not momok or not tucker:
            continue
        a = [r["test"]["mrr"] for r in momok]
        b = [r["test"]["mrr"] for r in tucker]
        rows.append([f"{recipe} ({_recipe(momok[0]['config'])})",
                     fmt.mean_std(a), len(a), ", ".join(f"`{r['name']}`" for r in momok),
                     fmt.mean_std(b), len(b), ", ".join(f"`{r['name']}`" for r in tucker),
                     f"{100 * (statistics.mean(a) - statistics.mean(b)):+.2f}"])
    if not rows:
        return []
    return ["", "MoMoK against TuckER under one recipe at a time (test MRR %, best-valid "
            "checkpoints, mean ± std over the seeds listed). MoMoK's recipe: the full row and "
            "its other seeds (Table 1's MoMoK runs) against TuckER with that recipe at "
            "MoMoK's lr. TuckER's recipe: MoMoK with it against Table 1's TuckER row (its "
            "learning rate selected on valid, which MoMoK's was not).", "",
            *fmt.table(["recipe", "MoMoK MRR", "n", "MoMoK runs", "TuckER MRR", "n", "TuckER runs",
                        "Δ MoMoK − TuckER"], rows)]


def _recipe_keys() -> Tuple[str, ...]:
    r"""The configuration keys in which Table 1's two recipes differ (label smoothing, lr
    decay); imported when needed, since :mod:`momok_pyg.reproduce` imports torch."""
    from momok_pyg.reproduce.plans import TUCKER_RECIPE
    return tuple(TUCKER_RECIPE)


def _recipe(config: Dict[str, Any]) -> str:
    return ", ".join(f"{k} = {config.get(k)}" for k in _recipe_keys())


def _recipe_twin(run: Dict[str, Any], pool: List[Dict[str, Any]]
                 ) -> Optional[Dict[str, Any]]:
    r"""The first run of :obj:`pool` whose configuration differs from :obj:`run`'s in
    the recipe (:func:`_recipe_keys`) and in nothing else that a result depends on
    (:meth:`~momok_pyg.training.TrainConfig.result_mismatch`, the rule by which a finished
    run is reused); ``None`` if there is none."""
    want = run_config(run)
    if want is None:
        return None
    keys = set(_recipe_keys())
    for other in pool:
        cfg = None if other is run else run_config(other)
        if cfg is not None and "mrr" in (other.get("test") or {}):
            diff = set(want.result_mismatch(cfg))
            if diff and diff <= keys:
                return other
    return None


def _recipe_table(results: List[Dict[str, Any]],
                  everything: Optional[AllResults]) -> List[str]:
    r"""MoMoK and TuckER each trained with both recipes of Table 1: MoMoK's (softmax CE, no
    label smoothing, constant lr) and TuckER's (label smoothing 0.1, lr decay 0.995 per
    epoch). The ``tucker-recipe`` row is the full MoMoK with TuckER's recipe; the
    ``tucker-momok-recipe`` row is TuckER with MoMoK's. Every seed of a row is paired with
    the run that differs from it only in the recipe (the same seed), and each model's line
    gives the mean ± std of both sides and of the paired differences
    :math:`\Delta_s = \mathrm{MRR}_s^{\text{other}} - \mathrm{MRR}_s^{\text{own}}`."""
    from momok_pyg.reproduce.plans import RECIPE_ROWS
    pool = list(results) + list((everything or {}).get("table1", []))
    pairs: Dict[str, List[Tuple[Dict[str, Any], Dict[str, Any]]]] = {}
    for r in sorted(results, key=lambda r: r["name"]):
        if r["meta"].get("row") not in RECIPE_ROWS:
            continue
        twin = _recipe_twin(r, pool)
        if twin is not None:
            model = "MoMoK" if _model(r) == "momok" else "TuckER"
            pairs.setdefault(model, []).append((twin, r))
    rows = []
    for model, group in sorted(pairs.items()):
        own = [t for t, _ in group]
        other = [r for _, r in group]
        rows.append([model, len(group), _recipe(own[0]["config"]),
                     ", ".join(f"`{t['name']}`" for t in own),
                     fmt.mean_std([t["test"]["mrr"] for t in own]),
                     _recipe(other[0]["config"]),
                     ", ".join(f"`{r['name']}`" for r in other),
                     fmt.mean_std([r["test"]["mrr"] for r in other]),
                     fmt.mean_std([r["test"]["mrr"] - t["test"]["mrr"] for t, r in group],
                                  signed=True)])
    if not rows:
        return []
    return ["", "The recipes of Table 1's two rows swapped: each model trained with its own "
            "recipe and with the other's (test MRR %, best-valid checkpoints; the two runs of a "
            "pair differ only in label smoothing and lr decay, and have one seed). *n*: the "
            "pairs; *Δ*: other − own per pair, mean ± std over the pairs.", "",
            *fmt.table(["model", "n", "own recipe", "runs", "MRR", "other recipe", "runs",
                        "MRR", "Δ MRR (paired)"], rows)]
