r"""One Markdown section per experiment of ``momok-pyg reproduce`` (and the status table),
each a function ``(results, fig_dir, rel, everything) -> lines`` that also writes its plots
under ``fig_dir`` and links them through ``rel``.

The modules follow the paper: :mod:`.table1` (Table 1 and the sections that read its runs),
:mod:`.ablations` (Table 2 / 8 and the recipe tables), :mod:`.analysis` (Fig. 3, Fig. 5 /
Table 4, Table 3 and unseen entities) and :mod:`.status` (how far each experiment is).
"""
from momok_pyg.report.sections.ablations import section_ablations
from momok_pyg.report.sections.analysis import (
    section_cost,
    section_gates,
    section_robustness,
    section_unseen,
)
from momok_pyg.report.sections.status import PAPER_ITEMS, section_status
from momok_pyg.report.sections.table1 import (
    BAND,
    METRICS,
    PAPER_TUCKER_MRR,
    section_baselines,
    section_encoders,
    section_evaluation,
    section_table1,
    selected_tucker,
)

#: (experiment, section) in the order of the report
SECTIONS = (("table1", section_table1), ("evaluation", section_evaluation),
            ("baselines", section_baselines),
            ("encoders", section_encoders),
            ("ablations", section_ablations),
            ("robustness", section_robustness), ("gates", section_gates),
            ("cost", section_cost), ("unseen", section_unseen))

__all__ = ["SECTIONS", "PAPER_TUCKER_MRR", "BAND", "METRICS", "PAPER_ITEMS", "selected_tucker",
           "section_table1", "section_evaluation", "section_baselines", "section_encoders",
           "section_ablations", "section_robustness", "section_gates", "section_cost",
           "section_unseen", "section_status"]
