r"""How far each experiment is: the runs planned against the result files present."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Union

from momok_pyg.report import formatting as fmt
from momok_pyg.report.results import AllResults

if TYPE_CHECKING:
    from os import PathLike as _OsPathLike

    PathLike = Union[str, _OsPathLike]


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
