r"""The raw entity inputs of MoMoK's modalities: the feature tables of the feature modalities
(with a learned placeholder for missing entities) and the learned embedding of the structure
modality, plus the row-wise feature preprocessing."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Parameter

FEATURE_NORMS = (None, "l2")


def preprocess_features(x: Tensor, norm: Optional[str] = "l2", pool: Optional[int] = None
                        ) -> Tensor:
    r"""Row-wise feature preprocessing: optional L2 normalisation, then optional 1-D adaptive
    average pooling to ``pool`` dims. Rows never mix, so missing (zero) rows stay zero and
    never influence present ones."""
    if norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {norm!r}")
    x = x.float()
    if norm == "l2":
        x = F.normalize(x, p=2.0, dim=1)
    if pool is not None:
        if not 0 < pool <= x.size(1):
            raise ValueError(f"feature_pool must be in [1, {x.size(1)}], got {pool}")
        if pool < x.size(1):
            x = F.adaptive_avg_pool1d(x.unsqueeze(1), pool).squeeze(1)
    return x.contiguous()


class ModalityTable(torch.nn.Module):
    r"""Raw entity inputs :math:`\mathbf{e}_m` ``[N, d_m]`` of one feature modality.

    Entities whose modality is missing (``mask`` False) read a learned placeholder vector
    :math:`\mathbf{p}_m` (initialised to the mean present row) instead of their stored row,
    so a missing row's content can never reach the model. With ``finetune=True`` the table
    is a parameter initialised from the features (the official code fine-tunes them);
    otherwise it is a fixed buffer.
    """
    def __init__(self, features: Tensor, mask: Optional[Tensor] = None, finetune: bool = True,
                 name: str = "modality"):
        super().__init__()
        n = features.size(0)
        mask = torch.ones(n, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        if mask.shape != (n, ):
            raise ValueError(f"modality {name!r}: mask must have shape [{n}], got "
                             f"{tuple(mask.shape)}")
        if not bool(mask.any()):
            raise ValueError(f"modality {name!r}: no entity has this modality (mask is all "
                             f"False); drop it with modalities=[...]")
        finite = torch.isfinite(features).all(dim=1)
        if bool((mask & ~finite).any()):
            row = int((mask & ~finite).nonzero()[0])
            raise ValueError(f"modality {name!r}: row {row} has NaN/Inf values but is marked "
                             f"present; expected finite features (mask missing entities)")
        self.name = name
        self.finetune = finetune
        source = torch.where(mask.unsqueeze(1), features, torch.zeros((), dtype=features.dtype))
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.table = Parameter(source.clone()) if finetune else None
        self.placeholder = (Parameter(torch.empty(features.size(1)))
                            if not bool(mask.all()) else None)
        self.reset_parameters()

    @property
    def dim(self) -> int:
        return self.source.size(1)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.table is not None:
                self.table.copy_(self.source)
            if self.placeholder is not None:
                self.placeholder.copy_(self.source[self.mask].mean(0))

    def forward(self) -> Tensor:
        x = self.table if self.table is not None else self.source
        if self.placeholder is None:
            return x
        return torch.where(self.mask.unsqueeze(1), x, self.placeholder.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{self.name!r}, {tuple(self.source.shape)}, "
                f"missing={int((~self.mask).sum())}, finetune={self.finetune}")


class StructureTable(torch.nn.Module):
    r"""The structure modality's raw input: a learned entity embedding ``[N, d]``
    (Xavier-normal, as official), or, with an :obj:`encoder`, that embedding passed through
    a graph encoder over the training graph, ``encoder(E, edge_index, edge_type) -> [N, d]``
    (:mod:`momok_pyg.nn.encoders`).

    Args:
        num_entities (int), dim (int): :math:`N` and :math:`d`.
        encoder (torch.nn.Module, optional): Called as ``encoder(x, edge_index, edge_type)``.
        edge_index (Tensor, optional), edge_type (Tensor, optional): The training graph
            ``[2, E]`` / ``[E]`` (required with :obj:`encoder`).
    """
    def __init__(self, num_entities: int, dim: int, encoder: Optional[torch.nn.Module] = None,
                 edge_index: Optional[Tensor] = None, edge_type: Optional[Tensor] = None):
        super().__init__()
        self.emb = Embedding(num_entities, dim)
        self.encoder = encoder
        if encoder is not None:
            if edge_index is None or edge_type is None:
                raise ValueError("a structure encoder needs the training graph: pass "
                                 "edge_index [2, E] and edge_type [E]")
            if edge_index.dim() != 2 or edge_index.size(0) != 2 or \
                    edge_type.shape != (edge_index.size(1), ):
                raise ValueError(f"expected edge_index [2, E] and edge_type [E], got "
                                 f"{tuple(edge_index.shape)} and {tuple(edge_type.shape)}")
            self.register_buffer("edge_index", edge_index.long(), persistent=False)
            self.register_buffer("edge_type", edge_type.long(), persistent=False)
        self.reset_parameters()

    @property
    def dim(self) -> int:
        return self.emb.embedding_dim

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.emb.weight)
        if self.encoder is not None and hasattr(self.encoder, "reset_parameters"):
            self.encoder.reset_parameters()

    def forward(self) -> Tensor:
        x = self.emb.weight
        if self.encoder is None:
            return x
        out = self.encoder(x, self.edge_index, self.edge_type)
        if out.shape != x.shape:
            raise ValueError(f"the structure encoder must map [N, d] = {tuple(x.shape)} to "
                             f"the same shape, got {tuple(out.shape)}")
        return out
