r"""Reproduction report: ``RESULTS.md`` tables and PNG plots from the result JSON files of
``momok-pyg reproduce`` alone (``python -m momok_pyg.report`` or ``momok-pyg report``).

Data flows one way through the package: :mod:`~momok_pyg.report.results` reads the JSON
files and derives numbers from them, :mod:`~momok_pyg.report.formatting` and
:mod:`~momok_pyg.report.plots` turn numbers into Markdown and PNG,
:mod:`~momok_pyg.report.sections` builds one section per experiment and
:mod:`~momok_pyg.report.document` puts them between the markers of the output file.
"""
from momok_pyg.report.document import BEGIN, END, main, render, write_report
from momok_pyg.report.results import (
    alt_selection_test,
    exid_share,
    load_all,
    seed_spread,
    selected_within,
)
from momok_pyg.report.sections import BAND, PAPER_TUCKER_MRR

__all__ = ["render", "write_report", "main", "load_all", "alt_selection_test",
           "selected_within", "seed_spread", "exid_share", "PAPER_TUCKER_MRR", "BAND",
           "BEGIN", "END"]
