r"""MoMoK model components (paper Section 4).

* :class:`ReMoKE` — relation-guided modality knowledge experts (Eq. 2)
* :class:`MuJoD` — multi-modal joint decision: fusion + per-modality Tucker scoring (Eq. 3-6)
* :class:`TuckerScorer` — 1-N Tucker score with relation-grouped core contraction (Eq. 4)
* :class:`CLUB`, :class:`ExID` — expert information disentanglement (Eq. 7-9)
* :class:`MoMoK` — the assembled model; :class:`TuckER` — the structure-only baseline
"""
from .tucker import TuckerScorer, group_by_relation, relation_grouped_matmul
from .remoke import ReMoKE, ReMoKEOutput, RelationTemperature, gate_entropy
from .mujod import JOINT, ModalityFusion, MuJoD
from .exid import CLUB, ExID
from .momok import MoMoK, MoMoKOutput, ModalityTable, StructureTable, preprocess_features
from .baselines import TuckER

__all__ = [
    "MoMoK", "MoMoKOutput", "ReMoKE", "ReMoKEOutput", "RelationTemperature", "MuJoD",
    "ModalityFusion", "ExID", "CLUB", "TuckerScorer", "TuckER", "ModalityTable",
    "StructureTable", "preprocess_features", "group_by_relation", "relation_grouped_matmul",
    "gate_entropy", "JOINT",
]
