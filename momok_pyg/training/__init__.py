r"""Training, model selection and checkpoint/resume for MoMoK and the TuckER baseline.

.. code-block:: python

    from momok_pyg.training import TrainConfig, train

    config = TrainConfig.for_dataset("MKG-Y", features="names", epochs=200)
    metrics = train(config, "runs/mkg-y")      # resumes if runs/mkg-y/last.pt exists
    metrics["test"]["mrr"]                     # test MRR of the best-valid checkpoint
"""
from .batching import OneToNQueries, epoch_generator
from .checkpoint import (
                         atomic_torch_save,
                         atomic_write_json,
                         get_rng_state,
                         load_checkpoint,
                         remove_stale_tmp,
                         seed_everything,
                         set_rng_state,
)
from .config import PRESETS, SYNTHETIC, TrainConfig, canonical_dataset
from .ensemble import EnsembleScorer
from .loop import build_model, fit, load_data, member_names, scorer, usable_modalities
from .optim import BackwardAdam
from .runs import EVALUATION_FILTERS, evaluate_run, evaluation_report, load_model, train
from .step import build_optimizers, train_epoch, train_step

__all__ = [
    "TrainConfig", "PRESETS", "SYNTHETIC", "canonical_dataset", "train", "fit", "train_epoch",
    "train_step", "build_optimizers",
    "evaluate_run", "evaluation_report", "EVALUATION_FILTERS", "load_model", "load_data",
    "build_model", "member_names", "scorer",
    "usable_modalities",
    "EnsembleScorer", "BackwardAdam", "OneToNQueries", "epoch_generator", "atomic_torch_save",
    "atomic_write_json", "load_checkpoint", "remove_stale_tmp", "get_rng_state",
    "set_rng_state", "seed_everything",
]
