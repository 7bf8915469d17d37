r"""Graph encoders for the structure modality: any PyG GNN in place of MoMoK's learned
entity table.

By default the structure modality's raw input is a learned embedding
:math:`\mathbf{E} \in \mathbb{R}^{N \times d}` (:class:`~momok_pyg.nn.tables.StructureTable`).
With ``MoMoK(..., structure_encoder=f)`` it is :math:`f(\mathbf{E}, \mathcal{G})`, where
:math:`\mathcal{G}` is the *training* graph (``data["entity", "relation", "entity"]
.edge_index / .edge_type``, never valid or test edges) and :math:`f` any
``torch.nn.Module`` called as ``f(x, edge_index, edge_type) -> [N, d]`` -- e.g. two
:class:`torch_geometric.nn.RGCNConv` layers (:class:`RGCNEncoder`) or a CompGCN-style stack.
It is recomputed over the whole graph once per training step (and once per evaluation), so
the experts, the gate and the Tucker scorers see message-passed entity states.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import RGCNConv
from torch_geometric.utils import scatter

IMPLS = ("auto", "edges", "pyg")


def _edge_plan(edge_index: Tensor, edge_type: Tensor,
               num_types: int) -> Tuple[Tensor, Tensor, Tensor, list]:
    r"""Edges sorted by type, their per-(target, type) mean weights and the type sizes:
    ``(src, dst, norm, counts)`` for :func:`rgcn_edges`."""
    order = torch.argsort(edge_type, stable=True)
    src, dst, typ = edge_index[0, order], edge_index[1, order], edge_type[order]
    _, inverse, count = torch.unique(dst * num_types + typ, return_inverse=True,
                                     return_counts=True)
    norm = count.reciprocal().to(torch.get_default_dtype())[inverse]
    counts = torch.bincount(typ, minlength=num_types).tolist()
    return src, dst, norm, counts


def rgcn_edges(conv: RGCNConv, x: Tensor, plan: Tuple[Tensor, Tensor, Tensor, list]) -> Tensor:
    r"""The layer of :obj:`conv` (its own parameters) computed per edge: every message
    :math:`\mathbf{W}_r \mathbf{h}_j` is one row of a per-relation matrix product over that
    relation's edges only, so a layer costs :math:`|\mathcal{E}| d^2` multiply-adds where
    :class:`~torch_geometric.nn.RGCNConv` without ``pyg-lib`` transforms all :math:`N` nodes
    once per relation (:math:`|\mathcal{R}| N d^2`: 20x more on MKG-Y's 56 typed relations).
    Same function as ``conv(x, edge_index, edge_type)`` (mean per relation, root weight,
    bias); ``tests/test_nn_encoders.py`` holds them equal, gradients included."""
    src, dst, norm, counts = plan
    weight = conv.weight
    if conv.num_bases is not None:  # basis decomposition, as RGCNConv composes it
        weight = (conv.comp @ weight.view(conv.num_bases, -1)).view(
            conv.num_relations, conv.in_channels_l, conv.out_channels)
    parts = [x_r @ weight[r] for r, x_r in enumerate(torch.split(x[src], counts)) if counts[r]]
    msg = torch.cat(parts) if parts else x.new_zeros(0, conv.out_channels)
    out = scatter(msg * norm.to(msg.dtype).unsqueeze(1), dst, dim=0, dim_size=x.size(0),
                  reduce="sum")
    if conv.root is not None:
        out = out + x @ conv.root
    if conv.bias is not None:
        out = out + conv.bias
    return out


class RGCNEncoder(torch.nn.Module):
    r"""A stack of relational graph convolutions (Schlichtkrull et al., 2018),

    .. math::
        \mathbf{h}_i^{(\ell+1)} = \mathbf{W}_0^{(\ell)} \mathbf{h}_i^{(\ell)} +
        \sum_{r} \frac{1}{|\mathcal{N}_i^r|} \sum_{j \in \mathcal{N}_i^r}
        \mathbf{W}_r^{(\ell)} \mathbf{h}_j^{(\ell)},

    with ReLU and dropout between layers and, with :obj:`residual`, the output
    :math:`\mathbf{h}^{(0)} + \mathbf{h}^{(L)}` (the encoder then starts close to the plain
    embedding table). With :obj:`add_inverse` every edge :math:`(h, r, t)` also passes
    messages as :math:`(t, r + R, h)`, so heads hear their tails and tails their heads.

    Args:
        dim (int): Input and output size :math:`d`.
        num_relations (int): :math:`R`, the original relations of the graph.
        num_layers (int): :math:`L`.
        num_bases (int, optional): Basis decomposition of the :math:`\mathbf{W}_r`.
        dropout (float): Dropout between layers.
        residual (bool): Add the input to the output.
        add_inverse (bool): Message passing along inverse edges too.
        impl (str): How each :class:`~torch_geometric.nn.RGCNConv` layer is computed:
            ``"edges"`` (:func:`rgcn_edges`: per-relation products over that relation's
            edges, :math:`|\mathcal{E}| d^2`), ``"pyg"`` (the layer's own ``forward``: without
            ``pyg-lib`` one :math:`N \times d \times d` product per relation) or ``"auto"``
            (default: ``"edges"`` on CPU and GPU alike; same function, same parameters).
    """
    def __init__(self, dim: int, num_relations: int, num_layers: int = 2,
                 num_bases: Optional[int] = None, dropout: float = 0.0,
                 residual: bool = True, add_inverse: bool = True, impl: str = "auto"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = "edges" if impl == "auto" else impl
        self.num_relations = num_relations
        self.add_inverse = add_inverse
        self.residual = residual
        self.dropout = dropout
        types = 2 * num_relations if add_inverse else num_relations
        self.convs = torch.nn.ModuleList(
            [RGCNConv(dim, dim, types, num_bases=num_bases) for _ in range(num_layers)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        dim = self.convs[0].in_channels_l
        if x.dim() != 2 or x.size(1) != dim:
            raise ValueError(f"RGCNEncoder(dim={dim}) got entity states of shape "
                             f"{tuple(x.shape)}; build it with the model's dim")
        if self.add_inverse:
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
            edge_type = torch.cat([edge_type, edge_type + self.num_relations])
        plan = (_edge_plan(edge_index, edge_type, self.convs[0].num_relations)
                if self.impl == "edges" else None)
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h, edge_index, edge_type) if plan is None else rgcn_edges(conv, h, plan)
            if i < len(self.convs) - 1:
                h = F.dropout(F.relu(h), self.dropout, self.training)
        return x + h if self.residual else h

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(layers={len(self.convs)}, "
                f"relations={self.num_relations}, inverse={self.add_inverse}, "
                f"residual={self.residual}, impl={self.impl!r})")


#: ``TrainConfig.structure_encoder["name"]`` -> encoder class, built as
#: ``cls(dim=..., num_relations=..., **the other keys)``
ENCODERS = {"rgcn": RGCNEncoder}


def build_encoder(spec: Mapping[str, Any], dim: int, num_relations: int) -> torch.nn.Module:
    r"""The encoder ``spec`` describes (``{"name": "rgcn", "num_layers": 2, ...}``)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in ENCODERS:
        raise ValueError(f"structure_encoder: expected {{'name': one of {sorted(ENCODERS)}, "
                         f"...}}, got {name!r}")
    return ENCODERS[name](dim=dim, num_relations=num_relations, **spec)
