r"""One Markdown section per experiment of ``momok-pyg reproduce`` (and the status
table), each a function ``(results, fig_dir, rel, everything) -> lines`` that also writes
its plots under ``fig_dir`` and links them through ``rel``."""
from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from momok_pyg.report import formatting as fmt
from momok_pyg.report.plots import heatmap, plot_curves, pyplot
from momok_pyg.report.results import (
    AllResults,
    alt_selection_test,
    exid_share,
    run_config,
    seed_group,
    selected_within,
    selection_mrr,
)

if TYPE_CHECKING:
    from os import PathLike as _OsPathLike

    PathLike = Union[str, _OsPathLike]


#: The paper's Table 1 test MRR (%) of the structure-only TuckER baseline.
PAPER_TUCKER_MRR = {"DB15K": 33.86, "MKG-W": 29.59, "MKG-Y": 37.05, "KVC16K": 15.90}


#: Band within which a TuckER row counts as reproduced (MRR points).
BAND = 1.5


METRICS = ("mrr", "hits@1", "hits@3", "hits@10")

#: (dataset, row label, the row's MoMoK runs, the dataset's selected TuckER runs)
ModalGroup = Tuple[str, str, List[Dict[str, Any]], List[Dict[str, Any]]]


def selected_tucker(runs: List[Dict[str, Any]]
                    ) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
    r"""Table 1's TuckER row of one dataset's Table 1 results: the grid run with the best
    selection MRR on valid, and the runs of its grid point (every seed); ``(None, [])``
    before a grid run has finished."""
    tucker = [r for r in runs if r["meta"].get("model") == "tucker"]
    grid = [r for r in tucker if r["meta"].get("stage") == "grid"]
    if not grid:
        return None, []
    best = max(grid, key=lambda r: selection_mrr(r) or -1.0)
    return best, [r for r in tucker if r["meta"].get("grid") == best["meta"]["grid"]]


def section_table1(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                   everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Table 1: link prediction on the four benchmarks", ""]
    by_ds: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_ds[r["meta"]["dataset"]].append(r)
    from momok_pyg.reproduce import TUCKER_GRID
    default_grid = [dict(p) for p in TUCKER_GRID]
    rows, grid_rows, notes = [], [], []
    modal_groups: List[ModalGroup] = []
    for ds in sorted(by_ds):
        runs = by_ds[ds]
        tucker = [r for r in runs if r["meta"].get("model") == "tucker"]
        grid = [r for r in tucker if r["meta"].get("stage") == "grid"]
        probes = [r for r in tucker if r["meta"].get("stage") == "probe"]
        best, selected = selected_tucker(runs)
        if grid:
            for r in sorted(grid, key=lambda r: json.dumps(r["meta"]["grid"], sort_keys=True)):
                grid_rows.append([ds, ", ".join(f"{k}={v}" for k, v in sorted(
                    r["meta"]["grid"].items())), fmt.pct(selection_mrr(r)),
                    fmt.pct(r["test"]["mrr"]), fmt.epochs(r), fmt.trained_on(r),
                    "**selected**" if r is best else ""])
            finished = [r["meta"]["grid"] for r in grid]
            # the default grid with points still running (a custom --grid is not known here)
            missing = ([p for p in default_grid if p not in finished]
                       if all(p in default_grid for p in finished) else [])
            for p in missing:
                grid_rows.append([ds, ", ".join(f"{k}={v}" for k, v in sorted(p.items())),
                                  "—", "—", "not finished", "—",
                                  "the selection above is among the finished points only"])
        for r in probes:
            grid_rows.append([ds, ", ".join(f"{k}={v}" for k, v in sorted(
                r["meta"]["grid"].items())), fmt.pct(selection_mrr(r)),
                fmt.pct(r["test"]["mrr"]), fmt.epochs(r), fmt.trained_on(r),
                "fixed-budget probe, not selectable"])
        for label, group in (("TuckER (structure)", selected),
                             *[(f"MoMoK ({feats})", [r for r in runs if r["meta"].get("model")
                                                     == "momok" and str(r["meta"].get(
                                                         "features")) == feats])
                               for feats in sorted({str(r["meta"].get("features")) for r in runs
                                                    if r["meta"].get("model") == "momok"})]):
            if not group:
                continue
            if label.startswith("MoMoK"):
                modal_groups.append((ds, label, group, selected))
            paper = PAPER_TUCKER_MRR.get(ds) if label.startswith("TuckER") else None
            mrr = statistics.mean(r["test"]["mrr"] for r in group)
            diff = "—" if paper is None else f"{100 * mrr - paper:+.2f}"
            up = [r["upstream_style"]["mrr"] for r in group if r.get("upstream_style")]
            alt = [alt_selection_test(r) for r in group]
            rows.append([ds, label, len(group), *(fmt.mean_std([r["test"][k] for r in group])
                                                  for k in METRICS),
                         "—" if paper is None else f"{paper:.2f}", diff,
                         fmt.mean_std(up), fmt.mean_std([a for a in alt if a is not None]),
                         "; ".join(fmt.epochs(r) for r in group), fmt.devices(group)])
        fig = plot_curves(sorted(runs, key=lambda r: r["name"]), fig_dir / f"table1-{ds}.png",
                          f"{ds}: valid / test MRR per epoch")
        notes.append(f"![{ds} curves]({rel / fig.name})")
    out += ["Test metrics (%) of the best-valid checkpoint of each run, mean ± std over seeds "
            "(n). *paper*: the paper's TuckER MRR; *Δ*: ours − paper (target ±"
            f"{BAND}). *upstream-style*: each run's maximum test MRR over its periodic test "
            "evaluations (how the upstream script reports; selects on test, shown only to "
            "measure that bias). *sel. not-in-train*: test MRR at the evaluation with the "
            "best MRR on the valid triples that are not also training triples (DB15K: 8,719 "
            "of 9,904 valid triples are in train), read from the same run's test curve.", ""]
    out += fmt.table(["dataset", "model", "n", "MRR", "Hits@1", "Hits@3", "Hits@10", "paper MRR",
                      "Δ MRR", "upstream-style MRR", "sel. not-in-train MRR",
                      "epochs (per seed)", "device"], rows)
    out += _per_modality_table(modal_groups)
    if grid_rows:
        out += ["", "TuckER grid at the first seed (selection on valid MRR):", ""]
        out += fmt.table(["dataset", "grid point", "valid MRR", "test MRR", "epochs", "device",
                          ""], grid_rows)
    out += [""] + notes + [""] + fmt.provenance(results)
    return out


def _per_modality_table(groups: List[ModalGroup]) -> List[str]:
    r"""The MoMoK rows of Table 1 scored by one modality at a time.

    Each modality :math:`m \in \mathcal{M} \cup \{J\}` has its own Tucker score
    :math:`\phi_m(h, r, t)`; inference ranks by :math:`\sum_m \phi_m`. The run JSON's
    ``per_modality`` holds the test metrics of ranking by one :math:`\phi_m` alone (same
    best-valid checkpoint), so this table shows what each modality contributes to the row's
    summed score, beside the structure-only TuckER of the same dataset.
    """
    if not groups:
        return []
    names: List[str] = []
    for _, _, group, _ in groups:
        for r in group:
            names += [m for m in (r.get("per_modality") or {}) if m not in names]
    names.sort(key=lambda m: m == "joint")  # the joint modality last, the others as found
    rows = []
    for ds, label, group, tucker in groups:
        summed = [r["test"]["mrr"] for r in group]
        ref = [r["test"]["mrr"] for r in tucker]
        diff = ("—" if not ref else
                f"{100 * (statistics.mean(summed) - statistics.mean(ref)):+.2f}")
        rows.append([ds, label, len(group),
                     *(fmt.mean_std([(r.get("per_modality") or {}).get(m, {}).get("mrr")
                                     for r in group]) for m in names),
                     fmt.mean_std(summed), fmt.mean_std(ref), diff])
    return ["", "MoMoK rows scored by one modality at a time: test MRR (%) of the same "
            "best-valid checkpoints ranked by one modality's Tucker score alone "
            "(`per_modality` in each run JSON; — where the run has no such modality), the "
            "summed score that the row above reports, and the structure-only TuckER row of "
            "the same dataset; mean ± std over the same seeds.", "",
            *fmt.table(["dataset", "model", "n", *(f"{m} only" for m in names),
                        "summed (row above)", "TuckER (structure)", "Δ summed − TuckER"],
                       rows)]


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

    def model(r: Dict[str, Any]) -> str:
        return (r.get("config") or {}).get("model", "momok")

    rows, others = [], set()
    for r in sorted(results, key=lambda r: (r["meta"].get("row") != "full", r["name"])):
        if full is None or r is full:
            d = ""
        elif model(r) != model(full):
            d = "—"  # another model: not an ablation of the full one
            others.add(model(r))
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
    out += _recipe_table(results, everything)
    out += _matched_recipe_table(full, every_seed, everything)
    out += fmt.seed_note(full, everything, "full")
    fig = plot_curves(sorted(results, key=lambda r: r["name"]), fig_dir / "ablations.png",
                      "ablations: valid / test MRR")
    out += ["", f"![ablation curves]({rel / fig.name})", ""] + fmt.provenance(every_seed)
    return out


def _matched_recipe_table(full: Optional[Dict[str, Any]], results: List[Dict[str, Any]],
                          everything: Optional[AllResults]) -> List[str]:
    r"""MoMoK against TuckER under one recipe at a time, over seeds: MoMoK's recipe (the
    full row and its other seeds, which are Table 1's MoMoK runs, against the
    ``tucker-momok-recipe`` row's seeds) and TuckER's (the ``tucker-recipe`` row's seeds
    against Table 1's TuckER row of the dataset: its grid point selected on valid, every
    seed). Table 1 itself sets each model's own recipe against the other's."""
    from momok_pyg.reproduce.plans import TUCKER_RECIPE
    if full is None:
        return []
    keys = tuple(TUCKER_RECIPE)
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
        rows.append([f"{recipe} ({_recipe(momok[0]['config'], keys)})",
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


def _recipe(config: Dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k} = {config.get(k)}" for k in keys)


def _recipe_twin(run: Dict[str, Any], pool: List[Dict[str, Any]],
                 keys: Sequence[str]) -> Optional[Dict[str, Any]]:
    r"""The first run of :obj:`pool` whose configuration differs from :obj:`run`'s in
    :obj:`keys` (the recipe) and in nothing else that a result depends on
    (:meth:`~momok_pyg.training.TrainConfig.result_mismatch`, the rule by which a finished
    run is reused); ``None`` if there is none."""
    want = run_config(run)
    if want is None:
        return None
    for other in pool:
        cfg = None if other is run else run_config(other)
        if cfg is not None and "mrr" in (other.get("test") or {}):
            diff = set(want.result_mismatch(cfg))
            if diff and diff <= set(keys):
                return other
    return None


def _recipe_table(results: List[Dict[str, Any]],
                  everything: Optional[AllResults]) -> List[str]:
    r"""MoMoK and TuckER each trained with both recipes of Table 1: MoMoK's (softmax CE, no
    label smoothing, constant lr) and TuckER's (label smoothing 0.1, lr decay 0.995 per
    epoch). The ``tucker-recipe`` row is the full MoMoK with TuckER's recipe; the
    ``tucker-momok-recipe`` row is TuckER with MoMoK's, paired with the Table 1 TuckER run
    that differs from it only in the recipe."""
    from momok_pyg.reproduce.plans import RECIPE_ROWS, TUCKER_RECIPE
    keys = tuple(TUCKER_RECIPE)
    pool = list(results) + list((everything or {}).get("table1", []))
    rows = []
    for r in sorted(results, key=lambda r: r["name"]):
        if r["meta"].get("row") not in RECIPE_ROWS:
            continue
        twin = _recipe_twin(r, pool, keys)
        if twin is None:
            continue
        model = "MoMoK" if r["config"].get("model") == "momok" else "TuckER"
        rows.append([model, f"`{twin['name']}` ({_recipe(twin['config'], keys)})",
                     fmt.pct(twin["test"]["mrr"]),
                     f"`{r['name']}` ({_recipe(r['config'], keys)})", fmt.pct(r["test"]["mrr"]),
                     f"{100 * (r['test']['mrr'] - twin['test']['mrr']):+.2f}"])
    if not rows:
        return []
    return ["", "The recipes of Table 1's two rows swapped: each model trained with its own "
            "recipe and with the other's (test MRR %, best-valid checkpoint; the runs of a "
            "line differ only in label smoothing and lr decay).", "",
            *fmt.table(["model", "own recipe (run)", "MRR", "other recipe (run)", "MRR",
                        "Δ MRR"], rows)]


def section_robustness(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                       everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Fig. 3: robustness", ""]
    clean = {r["meta"]["model"]: r for r in results if r["meta"].get("transform") is None}
    transforms = sorted({r["meta"]["transform"] for r in results if r["meta"].get("transform")})
    if not transforms:  # only the unperturbed runs so far: no curve to draw
        out += fmt.table(["transform", "model", "ratio", "test MRR"],
                         [["none", m, 0.0, fmt.pct(clean[m]["test"]["mrr"])]
                          for m in sorted(clean)])
        return out + ["", "No perturbed run has finished yet."] + [""] + fmt.provenance(results)
    plt = pyplot()
    # one x and one y axis (from 0) for all panels, so that a small change looks small
    fig, axes = plt.subplots(1, max(1, len(transforms)), figsize=(4 * max(1, len(transforms)),
                                                                  3.4), squeeze=False,
                             sharex=True, sharey=True)
    rows = []
    for ax, t in zip(axes[0], transforms):
        for model in sorted({r["meta"]["model"] for r in results}):
            pts = {r["meta"]["ratio"]: r["test"]["mrr"] for r in results
                   if r["meta"]["model"] == model and r["meta"].get("transform") == t}
            if model in clean:
                if not pts and t != "LinkSparsify":  # no modality to perturb: flat
                    pts = {x: clean[model]["test"]["mrr"] for x in
                           sorted({r["meta"]["ratio"] for r in results
                                   if r["meta"].get("transform") == t})}
                pts.setdefault(0.0, clean[model]["test"]["mrr"])
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=model)
            rows += [[t, model, x, fmt.pct(pts[x])] for x in xs]
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test MRR")
    axes[0][0].set_ylim(bottom=0.0)
    fig.tight_layout()
    path = fig_dir / "robustness.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out += fmt.table(["transform", "model", "ratio", "test MRR"], rows)
    out += ["", "TuckER has no feature modality: under ModalityNoise / ModalityMissing its "
            "clean run is its value at every ratio."]
    out += fmt.seed_note(clean.get("momok"), everything, "clean MoMoK")
    out += ["", f"![robustness]({rel / path.name})", ""] + fmt.provenance(results)
    return out


def section_gates(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                  everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Fig. 5 / Table 4: modality and expert weights per relation", ""]
    plt = pyplot()
    for r in results:
        if r.get("kind") != "gates":
            continue
        st = r["statistics"]
        keep = [i for i, c in enumerate(st["count"]) if c > 0]
        names = [st["relations"][i] for i in keep]
        panels = []
        if st.get("relation_fusion") is not None:
            panels.append(("joint relation fusion β_r", [st["relation_fusion"][i] for i in keep],
                           st["fusion_modalities"]))
        if st.get("fusion") is not None:
            panels.append(("joint entity fusion α (mean over queries)",
                           [st["fusion"][i] for i in keep], st["fusion_modalities"]))
        for m, g in st["gates"].items():
            panels.append((f"{m} expert gates", [g[i] for i in keep],
                           [f"expert {k}" for k in range(len(g[0]))]))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels),
                                                          0.22 * len(names) + 1.5),
                                 squeeze=False)
        for ax, (title, mat, cols) in zip(axes[0], panels):
            im = heatmap(ax, mat, names, cols, title)
            fig.colorbar(im, ax=ax, fraction=0.05)
        fig.tight_layout()
        path = fig_dir / f"{r['name']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out += [f"![{r['name']}]({rel / path.name})", ""]
        mods = list(r["per_relation_mrr"])
        queries: Dict[str, int] = defaultdict(int)  # both directions of each relation
        for name, c in zip(st["relations"], st["count"]):
            queries[name.removesuffix(" (inverse)")] += int(c)
        rows = [[rel_name, queries.get(rel_name, "—"),
                 *(fmt.pct(r["per_relation_mrr"][m].get(rel_name)) for m in mods),
                 r["best_modality"][rel_name]] for rel_name in sorted(r["best_modality"])]
        out += [f"Test MRR (%) per relation of each modality's own score "
                f"(`{r['source']}`; *queries*: test queries of the relation, both directions; "
                f"a handful of queries makes a row noisy):", ""]
        out += fmt.table(["relation", "queries", *mods, "best"], rows) + [""]
    return out + fmt.provenance(results)


def section_cost(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                 everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Table 3: cost per epoch", ""]
    # TuckER's seconds per epoch on the same dataset and machine (GPU, or CPU model): the
    # ratio's denominator
    tucker = {(r["meta"]["dataset"], fmt.machine(r)): r.get("epoch_seconds_median")
              for r in results if r["meta"]["model"] == "tucker"}
    rows = []
    for r in sorted(results, key=lambda r: (fmt.machine(r), r["meta"]["dataset"],
                                            r["meta"]["model"])):
        gpu = r.get("peak_gpu_memory_mb")
        sec = r.get("epoch_seconds_median")
        ref = tucker.get((r["meta"]["dataset"], fmt.machine(r)))
        ratio = f"{sec / ref:.1f}×" if sec and ref and r["meta"]["model"] != "tucker" else "—"
        rows.append([r["meta"]["dataset"], r["meta"]["model"], r["meta"].get("features") or "—",
                     fmt.machine(r), f"{sec:.1f}" if sec else "—", ratio,
                     f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "—",
                     f"{gpu:.0f}" if gpu else "—", r.get("num_parameters")])
    out += ["Seconds per training epoch (median of the epochs after the first, which "
            "includes compilation), peak RSS of the training process and, on a GPU, the peak "
            "memory torch's allocator handed out. One run at a time on the machine. "
            "*× TuckER*: seconds per epoch over TuckER's on the same dataset and machine (the "
            "same GPU, or the same CPU model; — where that pair was not measured on one).", ""]
    out += fmt.table(["dataset", "model", "features", "device", "s / epoch", "× TuckER",
                      "peak RSS (MB)", "peak GPU memory (MB)", "parameters"], rows)
    return out + [""] + fmt.provenance(results)


def section_unseen(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                   everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Beyond the paper: entities unseen in training", ""]
    rows = []
    for r in sorted(results, key=lambda r: r["name"]):
        u = r["test"].get("unseen_entity") or {}
        rows.append([r["meta"]["dataset"], "fine-tuned" if r["meta"].get("finetune_features")
                     else "fixed", fmt.pct(r["test"]["mrr"]), fmt.pct(u.get("mrr")),
                     fmt.pct(u.get("hits@10")), u.get("count", "—"), fmt.epochs(r)])
    out += fmt.table(["dataset", "feature tables", "test MRR", "unseen-entity MRR",
                      "unseen-entity Hits@10", "unseen queries", "epochs"], rows)
    return out + [""] + fmt.provenance(results)


def section_baselines(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                      everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Table 1, uni-modal baselines: PyG KGE models trained 1-N", ""]
    groups: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["meta"]["dataset"], r["meta"]["model"])].append(r)
    from momok_pyg.reproduce import BASELINE_LRS
    rows = []
    for (ds, model), runs in sorted(groups.items()):
        best = max(runs, key=lambda r: selection_mrr(r) or -1.0)
        tried = {r["meta"]["grid"].get("lr"): fmt.pct(selection_mrr(r)) for r in runs}
        tried.update({lr: "not finished" for lr in BASELINE_LRS if lr not in tried})
        grid = "; ".join(f"lr={lr}: {v}" for lr, v in sorted(tried.items()))
        rows.append([ds, fmt.with_args(model, best["meta"].get("model_kwargs") or {}),
                     f"lr={best['meta']['grid'].get('lr')}", grid,
                     *(fmt.pct(best["test"][k]) for k in METRICS), fmt.epochs(best),
                     fmt.device(best)])
    out += ["PyG's `torch_geometric.nn.kge` models through `momok_pyg.nn.KGEScorer`: 1-N "
            "softmax CE in both directions, d = 200, batch 1024, Adam, one seed; the learning "
            "rate with the best valid MRR among the finished grid points (grid column: valid MRR "
            "per learning rate) and its test metrics (%) under the same filtered evaluation as "
            "every other table.", ""]
    out += fmt.table(["dataset", "model", "selected", "grid (valid MRR)", "MRR", "Hits@1",
                      "Hits@3", "Hits@10", "epochs", "device"], rows)
    return out + [""] + fmt.provenance(results)


def section_encoders(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                     everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Composing with PyG: an R-GCN as the structure encoder", ""]
    table1 = {r["name"]: r for r in (everything or {}).get("table1", [])}
    rows = []
    for r in sorted(results, key=lambda r: r["name"]):
        label = fmt.with_args("R-GCN", {k: v for k, v in (r["meta"].get("encoder") or {}).items()
                                        if k != "name"})
        ref = table1.get(r["meta"].get("compare_to"))
        budget = int(r.get("max_epochs") or r["config"].get("epochs") or 0)
        same = None if ref is None else selected_within(ref, budget)
        ref_mrr = None if ref is None else ref["test"]["mrr"]

        mrr = r["test"]["mrr"]
        diff = ["—" if x is None else f"{100 * (mrr - x):+.2f}" for x in (ref_mrr, same)]
        rows.append([r["meta"]["dataset"], r["meta"]["model"], label,
                     *(fmt.pct(r["test"][k]) for k in METRICS), fmt.epochs(r),
                     f"`{r['meta'].get('compare_to')}`" if ref is not None else "not finished",
                     fmt.pct(ref_mrr), diff[0], fmt.pct(same), diff[1], fmt.device(r)])
    out += ["The structure modality's entity table passed through two PyG `RGCNConv` layers "
            "(`momok_pyg.nn.encoders.RGCNEncoder`: inverse edges, residual) over the training "
            "graph, everything else as in the Table 1 run named in *embedding table*, which "
            "differs only in the encoder; test metrics (%) of the best-valid checkpoint. "
            "*same budget*: the Table 1 run's test MRR at its best valid evaluation within the "
            "R-GCN run's epoch budget (read from its tracked curves).", ""]
    out += fmt.table(["dataset", "model", "structure encoder", "MRR", "Hits@1", "Hits@3",
                      "Hits@10", "epochs", "embedding table (Table 1 run)", "its MRR", "Δ MRR",
                      "its MRR, same budget", "Δ, same budget", "device"], rows)
    fig = plot_curves(sorted(results, key=lambda r: r["name"]) + [
        table1[r["meta"]["compare_to"]] for r in results if r["meta"].get("compare_to") in table1],
        fig_dir / "encoders.png", "R-GCN structure encoder vs embedding table: valid / test MRR")
    out += ["", f"![encoder curves]({rel / fig.name})"]
    return out + [""] + fmt.provenance(results)


def _filter_name(splits: List[str]) -> str:
    return "+".join(splits) if splits else "none (raw)"


def section_evaluation(results: List[Dict[str, Any]], fig_dir: Path, rel: Path,
                       everything: Optional[AllResults] = None) -> List[str]:
    out = ["### Table 1, TuckER rows under other evaluation protocols", ""]
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("kind") == "evaluation":
            groups[r["meta"]["dataset"]].append(r)
    if not groups:
        return []
    filters = [p["filter"] for p in results[0]["protocols"] if p["tie"] == "realistic"]

    def mrr(r: Dict[str, Any], splits: List[str], tie: str, key: str = "mrr") -> float:
        return next(p[key] for p in r["protocols"] if p["filter"] == splits and p["tie"] == tie)

    rows = []
    for ds, runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["name"])
        ties = max(abs(mrr(r, f, "optimistic") - mrr(r, f, "pessimistic"))
                   for r in runs for f in filters)
        full = filters[0]
        paper = PAPER_TUCKER_MRR.get(ds)
        rows.append([ds, len(runs),
                     *(fmt.mean_std([mrr(r, f, "realistic") for r in runs]) for f in filters),
                     fmt.pct(ties),
                     fmt.mean_std([mrr(r, full, "realistic", "head_mrr") for r in runs]),
                     fmt.mean_std([mrr(r, full, "realistic", "tail_mrr") for r in runs]),
                     "—" if paper is None else f"{paper:.2f}",
                     ", ".join(f"{label} ({n})" for label, n in sorted(Counter(
                         "trained again" if r.get("retrained") else "Table 1's own"
                         for r in runs).items()))])
    out += ["The best checkpoint of each finished Table 1 TuckER run (selected grid point, "
            "every seed) ranked again on test: test MRR (%) with the known answers of the "
            "listed splits filtered out (the first column is the protocol of every other "
            "table; *none* gives raw ranks), realistic ties, mean ± std over the runs (n). "
            "*ties*: the largest gap between optimistic and pessimistic ties under any "
            "filter. *head* / *tail*: the MRR of each direction under the full filter. "
            "*checkpoint*: the Table 1 run's own, or its configuration trained again where "
            "that checkpoint was not on the machine. A paper figure outside every column "
            "is not explained by the evaluation protocol.", ""]
    out += fmt.table(["dataset", "n", *(f"filter {_filter_name(f)}" for f in filters),
                      "ties (max opt. − pess.)", "head", "tail", "paper MRR", "checkpoint"],
                     rows)
    return out + [""] + fmt.provenance(results)


#: the paper item each experiment answers (the status table's second column)
PAPER_ITEMS = {
    "table1": "Table 1: TuckER (grid + seeds), MoMoK (seeds)",
    "baselines": "Table 1: uni-modal baselines (PyG KGE)",
    "encoders": "beyond the paper: R-GCN structure encoder",
    "ablations": "Table 2 / 8: ablations",
    "robustness": "Fig. 3: robustness curves",
    "gates": "Fig. 5 / Table 4: interpretability",
    "cost": "Table 3: cost per epoch",
    "unseen": "beyond the paper: unseen entities",
    "evaluation": "Table 1: TuckER rows under other evaluation protocols",
}


def section_status(results_dir: PathLike, everything: AllResults,
                   shown: int = 4) -> List[str]:
    r"""How far each experiment is: its runs as :func:`momok_pyg.reproduce.plan` knows them
    now (default options on a CPU, any CPU model: every benchmark, seeds 0-2; the report does
    not depend on the machine that writes it) against the result files present."""
    from momok_pyg.reproduce import EXPERIMENTS, Options, plan
    opts = Options(results_dir=str(results_dir), device="cpu", cpu_model=None)
    rows = []
    for exp in EXPERIMENTS:
        names = [spec.name for spec in plan(exp, opts)]
        done = {r["name"] for r in everything.get(exp, [])}
        pending = [n for n in names if n not in done]
        more = f" … (+{len(pending) - shown})" if len(pending) > shown else ""
        rows.append([f"`{exp}`", PAPER_ITEMS.get(exp, ""),
                     f"{len(names) - len(pending)} / {len(names)}",
                     ", ".join(f"`{n}`" for n in pending[:shown]) + more or "—"])
    return (["### Status: finished runs of each experiment", "",
             "Runs planned by `momok-pyg reproduce <experiment>` with its default options "
             "on a CPU "
             "(dependent runs, e.g. the TuckER seeds of a dataset whose grid is unfinished, "
             "appear once they can be planned) and how many have a result file. Every "
             "pending run is continued by the experiment's command.", ""]
            + fmt.table(["experiment", "paper item", "finished / planned", "pending (first "
                         f"{shown})"], rows))


SECTIONS = (("table1", section_table1), ("evaluation", section_evaluation),
            ("baselines", section_baselines),
            ("encoders", section_encoders),
            ("ablations", section_ablations),
            ("robustness", section_robustness), ("gates", section_gates),
            ("cost", section_cost), ("unseen", section_unseen))
