r"""The paper's experiments as run specifications: ``momok-pyg reproduce <experiment>``.

Each experiment is a list of *runs*; a run is one :class:`~momok_pyg.training.TrainConfig`
trained in its own run directory (``<runs_dir>/<experiment>/<name>/``, checkpoints, resumable)
and summarised in one JSON file (``<results_dir>/<experiment>/<name>.json``, small, meant to
be committed). A run whose JSON exists is done and skipped, so an experiment is continued by
running its command again, also in a later session or on another machine; a run interrupted
mid-way resumes from its ``last.pt``. Several processes may work on one experiment at once:
each claims a run with a lock file before it starts it. The lock names the claiming process
and its training child, and the child dies with its parent, so a stopped runner leaves no
trainer behind and no second trainer can start on the same run directory.

==============  =================================================================================
experiment      runs
==============  =================================================================================
``table1``      paper Table 1: structure-only TuckER (1-N softmax CE, label smoothing 0.1, the
                original TuckER dropouts and lr decay; the original BCE as a fixed-budget probe
                on MKG-Y) on every benchmark, a learning-rate grid on **valid** at seed 0, then
                the best grid point at the remaining seeds; MoMoK with the modalities
                available (``features="official"`` when the official feature files are in the
                raw folder, else ``"names"``) at the same budget and seeds
``ablations``   paper Table 2 / 8 on MKG-Y: full MoMoK and every ablation switch of the CLI
``robustness``  paper Fig. 3 on MKG-Y: ModalityNoise, ModalityMissing, LinkSparsify at several
                ratios, MoMoK vs TuckER
``gates``       paper Fig. 5 / Table 4 on MKG-Y: per-relation modality and expert weights of a
                trained MoMoK (:mod:`momok_pyg.interpret`)
``cost``        paper Table 3: seconds per epoch and peak RSS of MoMoK and TuckER per benchmark,
                per machine (a pair finished on another kind of device or CPU model is
                measured again under ``<model>-<dataset>-cpu`` / ``-cuda``, then
                ``-cpu-<CPU model>``)
``unseen``      beyond the paper: test triples with an entity unseen in training, fine-tuned vs
                fixed feature tables
``baselines``   paper Table 1's uni-modal baselines: PyG's TransE, DistMult, ComplEx, RotatE
                (:mod:`momok_pyg.nn.kge`) trained 1-N on every benchmark, a learning-rate grid
                on **valid** at the first seed
``encoders``    composing with PyG on MKG-Y: the structure modality's entity table passed
                through a PyG R-GCN (:class:`~momok_pyg.nn.encoders.RGCNEncoder`) over the
                training graph, for TuckER (its Table 1 selected grid point) and MoMoK (the
                Table 1 budget), each beside the Table 1 run that differs only in the encoder
``evaluation``  Table 1's TuckER rows under other evaluation protocols: each finished run's
                best checkpoint ranked with filters from all splits to none (raw), every tie
                mode, each direction (:func:`~momok_pyg.training.evaluation_report`)
==============  =================================================================================

Every run trains in a child process (``momok-pyg train --config``), so its peak RSS is its own
(:func:`os.wait4`). The JSON holds the configuration, the commit, the machine, the epochs run,
every (re)start of a resumed run (``starts``: the epoch it resumed after, its commit, machine
and thread count, so ``epoch_seconds`` can be read per machine), the wall time, the valid
(and, with ``track_test``, test) curve, the test metrics of the best-valid checkpoint, the
command that finished it and every command that (re)started it (``invocations``, with the
epoch each resumed after; kept in the run directory's ``invocations.json``);
:mod:`momok_pyg.report` builds ``RESULTS.md`` tables and PNG plots from these files alone.
"""
from .plans import (
    ABLATIONS,
    BASELINE,
    BASELINE_KWARGS,
    BASELINE_LRS,
    BASELINE_MODELS,
    BCE_PROBE_DATASETS,
    BENCHMARKS,
    EXPERIMENTS,
    FOLDERS,
    MOMOK,
    OFFICIAL_FILES,
    OFFICIAL_LAMBDA,
    RESULT_VERSION,
    RGCN,
    ROBUSTNESS_RATIOS,
    ROBUSTNESS_TRANSFORMS,
    TUCKER,
    TUCKER_BCE_PROBE,
    TUCKER_GRID,
    Options,
    RunSpec,
    features_for,
    load_results,
    official_available,
    parse_grid,
    plan,
    selected_grid_run,
    selection_score,
)
from .runner import describe, run_experiment, run_training, status, summarise

__all__ = [
    "ABLATIONS", "BASELINE", "BASELINE_KWARGS", "BASELINE_LRS", "BASELINE_MODELS",
    "BCE_PROBE_DATASETS", "BENCHMARKS", "EXPERIMENTS", "FOLDERS", "MOMOK", "OFFICIAL_FILES",
    "OFFICIAL_LAMBDA",
    "RESULT_VERSION", "RGCN", "ROBUSTNESS_RATIOS", "ROBUSTNESS_TRANSFORMS", "TUCKER",
    "TUCKER_BCE_PROBE", "TUCKER_GRID", "Options", "RunSpec", "features_for", "load_results",
    "official_available", "parse_grid", "plan", "selected_grid_run", "selection_score",
    "describe", "run_experiment", "run_training", "status", "summarise",
]
