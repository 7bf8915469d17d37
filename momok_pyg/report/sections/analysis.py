r"""The sections read off trained models rather than Table 1: Fig. 3 robustness curves
(:func:`section_robustness`), Fig. 5 / Table 4 modality and expert weights
(:func:`section_gates`), Table 3 cost per epoch (:func:`section_cost`) and entities unseen
in training (:func:`section_unseen`)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from momok_pyg.report import formatting as fmt
from momok_pyg.report.plots import heatmap, pyplot
from momok_pyg.report.results import AllResults


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
