r"""Baselines built from the MoMoK machinery."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch import Tensor

from .momok import MoMoK

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData


class TuckER(MoMoK):
    r"""The structure-only TuckER baseline (Balažević et al., 2019): one learned entity
    embedding, one :class:`~momok_pyg.nn.TuckerScorer`, 1-N scoring

    .. math::
        \phi(h, r, t) = \mathcal{W} \times_1 \mathbf{r} \times_2 \mathbf{e}_h
        \times_3 \mathbf{e}_t,

    i.e. :class:`MoMoK` with no feature modality, no experts (``num_experts=0``: the
    embedding is used as is), no joint modality and no ExID. Its parameters are the entity
    embedding, the ``2R`` relation embeddings, the core tensor and the two BatchNorms.

    The loss defaults to MoMoK's default (``"ce"``) so that the two are trained alike; the
    original TuckER uses ``loss="bce"`` with label smoothing 0.1.
    """
    def __init__(self, num_entities: int, num_relations: int, dim: int = 300,
                 rel_dim: Optional[int] = None, loss: str = "ce",
                 label_smoothing: Optional[float] = None, input_dropout: float = 0.3,
                 hidden_dropout: float = 0.4, output_dropout: float = 0.5,
                 batch_norm: bool = True, grouped: str = "loop",
                 hidden_dropout_mode: str = "sample",
                 structure_encoder: Optional[torch.nn.Module] = None,
                 structure_graph: Optional[Tuple[Tensor, Tensor]] = None):
        super().__init__(num_entities, num_relations, features=None, masks=None, dim=dim,
                         rel_dim=rel_dim, num_experts=0, use_structure=True, joint=False,
                         exid=False, loss=loss, label_smoothing=label_smoothing,
                         aggregate="sum", input_dropout=input_dropout,
                         hidden_dropout=hidden_dropout, output_dropout=output_dropout,
                         batch_norm=batch_norm, grouped=grouped,
                         hidden_dropout_mode=hidden_dropout_mode,
                         structure_encoder=structure_encoder, structure_graph=structure_graph)

    @classmethod
    def from_data(cls, data: HeteroData, **kwargs) -> "TuckER":
        r"""Builds the baseline for an MMKG (its feature modalities are ignored)."""
        if kwargs.get("structure_encoder") is not None and "structure_graph" not in kwargs:
            store = data["entity", "relation", "entity"]
            kwargs["structure_graph"] = (store.edge_index, store.edge_type)
        return cls(int(data["entity"].num_nodes), int(data.num_relations), **kwargs)
