r"""MoMoK model components (paper Section 4).

* :class:`ReMoKE` — relation-guided modality knowledge experts (Eq. 2)
* :class:`MuJoD` — multi-modal joint decision: fusion + per-modality Tucker scoring (Eq. 3-6)
* :class:`TuckerScorer` — 1-N Tucker score with relation-grouped core contraction (Eq. 4);
  :func:`per_sample_dropout_matmul` — its official per-sample hidden dropout
* :func:`one_to_n_loss` — MuJoD's 1-N losses on sparse multi-hot targets (Eq. 5)
* :class:`CLUB`, :class:`ExID` — expert information disentanglement (Eq. 7-9)
* :class:`MoMoK` — the assembled model; :class:`TuckER` — the structure-only baseline
* :class:`KGEScorer` — PyG's TransE / DistMult / ComplEx / RotatE as 1-N uni-modal baselines
* :class:`ModalityTable`, :class:`StructureTable` — the modalities' raw entity inputs

:mod:`momok_pyg.nn.reference` writes the same model literally (eager, per sample) for readers
and tests; :mod:`momok_pyg.nn.kernels` holds the fast paths the modules above call.
"""
from .baselines import TuckER
from .encoders import RGCNEncoder
from .exid import CLUB, ExID
from .kernels.grouped import group_by_relation, relation_grouped_matmul
from .kernels.tucker_dropout import (
    draw_keep_masks,
    gradient_noise_matmul,
    keep_masks,
    keep_probability,
    keep_threshold,
    per_sample_dropout_matmul,
)
from .kge import KGE_MODELS, KGEScorer
from .loss import linear_one_to_n_loss, one_to_n_loss
from .momok import MoMoK, MoMoKLoss, MoMoKOutput
from .mujod import JOINT, ModalityFusion, MuJoD
from .remoke import RelationTemperature, ReMoKE, ReMoKEOutput, gate_entropy
from .tables import ModalityTable, StructureTable, preprocess_features
from .tucker import TuckerScorer

__all__ = [
    "MoMoK", "MoMoKOutput", "ReMoKE", "ReMoKEOutput", "RelationTemperature", "MuJoD",
    "ModalityFusion", "ExID", "CLUB", "TuckerScorer", "TuckER", "ModalityTable",
    "StructureTable", "preprocess_features", "group_by_relation", "relation_grouped_matmul",
    "gate_entropy", "JOINT", "one_to_n_loss", "linear_one_to_n_loss", "MoMoKLoss",
    "per_sample_dropout_matmul", "keep_masks", "draw_keep_masks", "keep_probability",
    "keep_threshold", "gradient_noise_matmul", "KGEScorer", "KGE_MODELS", "RGCNEncoder",
]
