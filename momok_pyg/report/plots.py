r"""The report's PNG plots (matplotlib, Agg backend): valid / test curves and heatmaps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def not_in_train_curve(curve: List[Dict[str, Any]], min_gap: float = 0.01
                       ) -> Optional[Tuple[List[int], List[float]]]:
    r"""``(epochs, MRRs)`` on the valid triples not in train, or :obj:`None` where that
    differs from the valid MRR by at most :obj:`min_gap` everywhere (no leak worth a line)."""
    pts = [(c["epoch"], c["not_in_train"]["mrr"], c["mrr"]) for c in curve
           if "mrr" in (c.get("not_in_train") or {})]
    if not pts or max(abs(n - v) for _, n, v in pts) <= min_gap:
        return None
    return [e for e, _, _ in pts], [n for _, n, _ in pts]


def plot_curves(results: Sequence[Dict[str, Any]], path: Path, title: str) -> Path:
    r"""Valid MRR (solid), where tracked test MRR (dotted) and, where it differs from valid
    by more than a point (DB15K's valid triples that are also training triples), the MRR on
    the valid triples not in train (dashed) per epoch of each run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    dashed = False
    for r in results:
        curve = r.get("valid_curve") or []
        line, = ax.plot([c["epoch"] for c in curve], [c["mrr"] for c in curve],
                        label=r["name"], lw=1.4)
        test = r.get("test_curve") or []
        if test:
            ax.plot([c["epoch"] for c in test], [c["mrr"] for c in test], ls=":",
                    color=line.get_color(), lw=1.0)
        nit = not_in_train_curve(curve)
        if nit is not None:
            ax.plot(*nit, ls="--", color=line.get_color(), lw=1.0)
            dashed = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("filtered MRR (solid: valid, dotted: test" +
                  (",\ndashed: valid not in train)" if dashed else ")"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(ax, matrix: List[List[float]], rows: List[str], cols: List[str], title: str):
    import numpy as np
    m = np.array(matrix, dtype=float)
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, np.nanmax(m)))
    ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=30)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=8)
    return im
