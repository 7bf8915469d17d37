r"""The MoMoK model: ReMoKE experts per modality + MuJoD joint decision + ExID."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import ModuleDict, Parameter

from ..datasets.schema import STRUCTURE, modality_features, modality_masks
from .exid import ExID
from .mujod import JOINT, MuJoD
from .remoke import RelationTemperature, ReMoKE
from .tables import ModalityTable, StructureTable, preprocess_features

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData


class MoMoKOutput(NamedTuple):
    r"""What :meth:`MoMoK.forward` returns for a batch of queries ``(h, r, ?)``."""
    scores: Dict[str, Tensor]  #: ``{m: [B, N]}`` logits per scored modality (incl. ``"joint"``)
    views: Dict[str, Tensor]  #: ``{m: [B, K, d_m]}`` expert views of the heads (for ExID)
    gates: Dict[str, Tensor]  #: ``{m: [B, K]}`` relation-aware gate weights of the heads
    fusion_weights: Optional[Tensor] = None  #: ``[B, M]`` joint attention of the heads


class MoMoKLoss(NamedTuple):
    r"""What :meth:`MoMoK.forward_loss` returns for a batch of queries and their answers."""
    loss: Tensor  #: :math:`\mathcal{L}_{kgc} = \sum_m \mathcal{L}_m` (scalar)
    views: Dict[str, Tensor]  #: ``{m: [B, K, d_m]}`` expert views of the heads (for ExID)
    gates: Dict[str, Tensor]  #: ``{m: [B, K]}`` relation-aware gate weights of the heads
    fusion_weights: Optional[Tensor] = None  #: ``[B, M]`` joint attention of the heads


@dataclass
class _EntityState:
    raw: Dict[str, Tensor] = field(default_factory=dict)  # [N, d_in]
    views: Dict[str, Tensor] = field(default_factory=dict)  # [N, K, d]
    logits: Dict[str, Tensor] = field(default_factory=dict)  # [N, K]
    cand: Dict[str, Tensor] = field(default_factory=dict)  # [N, d] (+ joint)
    concat: Dict[tuple, Tensor] = field(default_factory=dict)  # memo for predict
    mats: Dict[str, Tensor] = field(default_factory=dict)  # all W_r (cached eval only)


class MoMoK(torch.nn.Module):
    r"""MoMoK, Mixture of Modality Knowledge experts for multi-modal KG completion
    (Zhang et al., ICLR 2025), for any set of feature modalities.

    For every modality :math:`m \in \mathcal{M}` (the learned ``"structure"`` embedding plus
    each feature modality of the dataset) a :class:`ReMoKE` turns the raw input
    :math:`\mathbf{e}_m` into :math:`K` expert views and mixes them with a relation-aware gate
    (Eq. 2); :class:`MuJoD` scores each modality and the fused joint modality :math:`J` with
    its own :class:`TuckerScorer` (Eq. 3-4), trains on the sum of the per-modality 1-N losses
    (Eq. 5) and predicts with the summed scores (Eq. 6); :class:`ExID` bounds the mutual
    information between experts (Eq. 7-9; the trainer adds
    :math:`\lambda\,` :meth:`ExID.upper_bound` and trains :math:`Q_\theta` alternately).

    Queries are ``(h, r, ?)`` with ``r`` in ``[0, 2R)``: relation ``r + R`` is the reciprocal
    of ``r``, so head prediction ``(?, r, t)`` is the query ``(t, r + R, ?)``.

    **One step's cost.** Every modality's expert views ``[N, K, d]``, gate logits and
    candidate embeddings are computed *once* for all entities; head views/gates are rows of
    them; the joint :math:`J` of all entities is fused once; the Tucker core is contracted
    once per distinct relation. Inside :meth:`cached_entities` the all-entity part is
    computed once per evaluation pass.

    **Where this follows the official code** (the paper is silent): gate noise is drawn
    once per entity and step and shared by its head and candidate roles (official: two
    independent draws); candidates use the relation-free gate (see :class:`ReMoKE`); the
    relation temperature is one table shared by all modalities; :math:`J`'s relation
    embedding is fused from the modalities' tables with size ``rel_dim`` (official:
    ``dim``; equal for the default ``rel_dim=None``).

    **Features.** ``feature_norm="l2"`` (official) L2-normalises every feature row,
    ``feature_pool`` average-pools each row to fewer dims with a 1-D adaptive average pool.
    This is *not* what the official code does: it reshapes rows of some datasets to 2-D and
    applies dataset-specific 2-D adaptive pools, and for the text features that pool
    upsamples one axis (32 to 64 columns: each column is repeated, not averaged), so its
    output is no 1-D average of the row. The 1-D pool here never depends on the dataset's
    name; the default (``None``) keeps the features' own size. ``finetune_features=True``
    (default, as official) trains the feature tables as parameters; ``False`` keeps them
    fixed. Fine-tuning lets the rows of entities that never occur in a training triple drift
    (they only receive the 1-N negatives' gradient), so with fixed tables MoMoK generalises
    far better to such entities (see the ``unseen_entity`` breakdown of the metrics), while
    fine-tuning learns faster on well-connected ones. Missing entities use a learned
    placeholder per modality (:class:`ModalityTable`).

    Args:
        num_entities (int): :math:`N`.
        num_relations (int): :math:`R` original relations (the model uses ``2R``).
        features (Mapping[str, Tensor], optional): ``{m: [N, d_m]}`` raw features.
        masks (Mapping[str, Tensor], optional): ``{m: bool [N]}``, False = missing.
        dim (int): View size :math:`d` of every modality (unless ``modality_dims``) and
            size of :math:`J`; also the structure embedding size.
        rel_dim (int, optional): Relation embedding size :math:`d_r` (default ``dim``).
        num_experts (int): :math:`K`; 0 = no experts (modality input used as is).
        modalities (list[str], optional): Feature modalities to use (default: all).
        use_structure (bool): Include the structure modality.
        joint (bool): Score the joint modality :math:`J`.
        fusion (str): ``"attention"`` or ``"mean"``.
        noise (bool): Gate noise in training.
        rel_temperature (bool): Relation temperature :math:`\sigma(\epsilon_r)`; if
            :obj:`False` the gate does not depend on the relation.
        gate_input (str): ``"views"`` (paper) or ``"raw"`` (official), see :class:`ReMoKE`.
        exid (bool): Build :class:`ExID` (needs ``num_experts >= 2``; else ``exid`` is
            :obj:`None`).
        loss (str), label_smoothing (float, optional), aggregate (str): See :class:`MuJoD`.
        finetune_features (bool), feature_norm (str, optional),
            feature_pool (int or Mapping[str, int], optional): See above.
        modality_dims (Mapping[str, int], optional): Per-modality view sizes overriding
            ``dim`` (e.g. the official code keeps the raw feature sizes).
        expert_dropout (float): :class:`ReMoKE` input dropout (official 0).
        input_dropout, hidden_dropout, output_dropout (float), batch_norm (bool),
            grouped (str), hidden_dropout_mode (str): :class:`TuckerScorer` settings
            (official rates 0.3 / 0.4 / 0.5).
        fusion_heads (int), fusion_dropout (float): :class:`ModalityFusion` settings.
        noise_eps (float): Gate noise-scale floor.
        exid_hidden (int, optional), exid_pairs (str), exid_shared (bool),
            exid_sample (bool): :class:`ExID` settings.
        structure_encoder (torch.nn.Module, optional): A graph encoder for the structure
            modality, ``f(x, edge_index, edge_type) -> [N, dim]`` (e.g.
            :class:`~momok_pyg.nn.encoders.RGCNEncoder`), applied to the learned entity table
            over ``structure_graph``, the training graph ``(edge_index, edge_type)``
            (:meth:`from_data` passes the dataset's).
    """
    def __init__(self, num_entities: int, num_relations: int,
                 features: Optional[Mapping[str, Tensor]] = None,
                 masks: Optional[Mapping[str, Tensor]] = None, dim: int = 300,
                 rel_dim: Optional[int] = None, num_experts: int = 3,
                 modalities: Optional[List[str]] = None, use_structure: bool = True,
                 joint: bool = True, fusion: str = "attention", noise: bool = True,
                 rel_temperature: bool = True, gate_input: str = "views", exid: bool = True,
                 loss: str = "ce", label_smoothing: Optional[float] = None,
                 aggregate: str = "sum", *, finetune_features: bool = True,
                 feature_norm: Optional[str] = "l2",
                 feature_pool: Union[int, Mapping[str, int], None] = None,
                 modality_dims: Optional[Mapping[str, int]] = None,
                 expert_dropout: float = 0.0, input_dropout: float = 0.3,
                 hidden_dropout: float = 0.4, output_dropout: float = 0.5,
                 batch_norm: bool = True, grouped: str = "loop",
                 hidden_dropout_mode: str = "sample", fusion_heads: int = 2,
                 fusion_dropout: float = 0.2, noise_eps: float = 1e-2,
                 exid_hidden: Optional[int] = None, exid_pairs: str = "all",
                 exid_shared: bool = True, exid_sample: bool = False,
                 structure_encoder: Optional[torch.nn.Module] = None,
                 structure_graph: Optional[Tuple[Tensor, Tensor]] = None):
        super().__init__()
        if num_entities <= 0 or num_relations <= 0:
            raise ValueError(f"need num_entities > 0 and num_relations > 0, got "
                             f"{num_entities} and {num_relations}")
        if num_experts < 0:
            raise ValueError(f"num_experts must be >= 0, got {num_experts}")
        features = dict(features or {})
        masks = dict(masks or {})
        if modalities is None:
            modalities = list(features)
        for m in modalities:
            if m not in features:
                raise ValueError(f"modality {m!r} requested but no features given for it; "
                                 f"available: {list(features)}")
            if m in (STRUCTURE, JOINT) or "." in m or not m:
                raise ValueError(f"invalid feature modality name {m!r} ('{STRUCTURE}' and "
                                 f"'{JOINT}' are reserved, names must not contain '.')")
            x = features[m]
            if x.dim() != 2 or x.size(0) != num_entities:
                raise ValueError(f"features[{m!r}] must be [{num_entities}, d], got "
                                 f"{tuple(x.shape)}")
        if not use_structure and not modalities:
            raise ValueError("no modality left: use_structure=False and no feature modality")
        modality_dims = dict(modality_dims or {})
        pools = (dict(feature_pool) if isinstance(feature_pool, Mapping) else
                 {m: feature_pool for m in modalities})

        self.num_entities = num_entities
        self.num_relations = num_relations
        self.dim = dim
        self.rel_dim = rel_dim or dim
        self.num_experts = num_experts
        self.feature_modalities: List[str] = list(modalities)
        self.expert_modalities: List[str] = ([STRUCTURE] if use_structure else []) + \
            self.feature_modalities

        self.inputs = ModuleDict()
        if use_structure:
            graph = structure_graph if structure_encoder is not None else None
            self.inputs[STRUCTURE] = StructureTable(
                num_entities, dim, structure_encoder, *(graph or (None, None)))
        elif structure_encoder is not None:
            raise ValueError("structure_encoder given but use_structure=False")
        for m in self.feature_modalities:
            x = preprocess_features(features[m], feature_norm, pools.get(m))
            self.inputs[m] = ModalityTable(x, masks.get(m), finetune_features, name=m)

        out_dims = {}
        for m in self.expert_modalities:
            raw = self.inputs[m].dim
            out_dims[m] = modality_dims.get(m, dim) if num_experts > 0 else raw
        self.out_dims = out_dims
        if num_experts > 0:
            self.experts = ModuleDict({
                m: ReMoKE(self.inputs[m].dim, out_dims[m], num_experts, noise, gate_input,
                          expert_dropout, noise_eps)
                for m in self.expert_modalities
            })
            self.temperature = (RelationTemperature(2 * num_relations)
                                if rel_temperature else None)
        else:
            self.experts = None
            self.temperature = None
        self.mujod = MuJoD(out_dims, 2 * num_relations, self.rel_dim, dim, joint=joint,
                           fusion=fusion, fusion_heads=fusion_heads,
                           fusion_dropout=fusion_dropout, loss=loss,
                           label_smoothing=label_smoothing, aggregate=aggregate,
                           input_dropout=input_dropout, hidden_dropout=hidden_dropout,
                           output_dropout=output_dropout, batch_norm=batch_norm,
                           grouped=grouped, hidden_dropout_mode=hidden_dropout_mode)
        self.exid: Optional[ExID] = (ExID(out_dims, num_experts, exid_hidden, exid_pairs,
                                          exid_shared, exid_sample)
                                     if exid and num_experts >= 2 else None)
        self.score_modalities: List[str] = list(self.mujod.score_modalities)
        self._cache: Optional[Tuple[tuple, _EntityState]] = None

    @classmethod
    def from_data(cls, data: HeteroData, **kwargs) -> "MoMoK":
        r"""Builds the model for one MMKG :class:`~torch_geometric.data.HeteroData`
        (see :mod:`momok_pyg.datasets.schema`); ``kwargs`` go to the constructor."""
        if kwargs.get("structure_encoder") is not None and "structure_graph" not in kwargs:
            store = data["entity", "relation", "entity"]
            kwargs["structure_graph"] = (store.edge_index, store.edge_type)
        return cls(int(data["entity"].num_nodes), int(data.num_relations),
                   features=modality_features(data), masks=modality_masks(data), **kwargs)

    def reset_parameters(self) -> None:
        for module in self.inputs.values():
            module.reset_parameters()
        if self.experts is not None:
            for module in self.experts.values():
                module.reset_parameters()
        if self.temperature is not None:
            self.temperature.reset_parameters()
        self.mujod.reset_parameters()
        if self.exid is not None:
            self.exid.reset_parameters()
        self._cache = None

    def kgc_parameters(self) -> Iterator[Parameter]:
        r"""Every parameter except ExID's :math:`Q_\theta` networks (which have their own
        optimizer)."""
        skip = set() if self.exid is None else {id(p) for p in self.exid.parameters()}
        return (p for p in self.parameters() if id(p) not in skip)

    # ----------------------------------------------------------------------------- state --
    def _param_versions(self) -> tuple:
        return tuple(p._version for p in self.kgc_parameters())

    def _compute_state(self, index: Optional[Tensor] = None) -> _EntityState:
        # all entities, or only the rows `index` (sampled-candidate training)
        st = _EntityState()
        for m in self.expert_modalities:
            x = self.inputs[m]()
            if index is not None:
                x = x.index_select(0, index)
            st.raw[m] = x
            if self.experts is None:
                st.cand[m] = x
                continue
            remoke = self.experts[m]
            views = remoke.experts(x)
            cand, logits = remoke.candidates(x, views)  # relation-free gate
            st.views[m], st.logits[m], st.cand[m] = views, logits, cand
        if self.mujod.joint:
            st.cand[JOINT] = self.mujod.joint_embedding(
                {m: st.cand[m] for m in self.expert_modalities})[0]
        return st

    def _entity_state(self) -> _EntityState:
        if (self._cache is not None and not self.training and not torch.is_grad_enabled()
                and self._cache[0] == self._param_versions()):
            return self._cache[1]
        return self._compute_state()

    @contextmanager
    def cached_entities(self):
        r"""Context for evaluation passes: switches to eval mode and computes all entities'
        views, gate logits and candidate embeddings, and every relation's Tucker matrix
        :math:`\mathbf{W}_r`, once; :meth:`predict` (and no-grad eval forwards) reuse them.
        A parameter update inside the context is detected (tensor version counters) and
        triggers a recompute, so nothing stale is ever used."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                state = self._compute_state()
                state.mats = self.mujod.relation_matrices()
                self._cache = (self._param_versions(), state)
            yield self
        finally:
            self._cache = None
            self.train(was_training)

    def entity_embeddings(self) -> Dict[str, Tensor]:
        r"""Relation-free modality embeddings of all entities, ``{m: [N, d_m]}`` (incl.
        ``"joint"``), as used for candidates."""
        return dict(self._entity_state().cand)

    def relation_temperatures(self) -> Optional[Tensor]:
        r""":math:`\sigma(\epsilon_r)` of all ``2R`` relations (:obj:`None` if disabled)."""
        if self.temperature is None:
            return None
        return torch.sigmoid(self.temperature.eps.weight.squeeze(-1))

    # --------------------------------------------------------------------------- forward --
    def _check_ids(self, head: Tensor, rel: Tensor) -> None:
        if head.dim() != 1 or rel.shape != head.shape:
            raise ValueError(f"head and rel must be 1-D of equal length, got "
                             f"{tuple(head.shape)} and {tuple(rel.shape)}")
        if head.numel() == 0:
            raise ValueError("empty batch")
        if int(head.min()) < 0 or int(head.max()) >= self.num_entities:
            raise ValueError(f"head ids must be in [0, {self.num_entities}), got "
                             f"[{int(head.min())}, {int(head.max())}]")
        if int(rel.min()) < 0 or int(rel.max()) >= 2 * self.num_relations:
            raise ValueError(f"relation ids must be in [0, {2 * self.num_relations}) "
                             f"(r + {self.num_relations} = reciprocal of r), got "
                             f"[{int(rel.min())}, {int(rel.max())}]")

    def _heads(self, head: Tensor, rel: Tensor, st: _EntityState
               ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]:
        temp = self.temperature(rel) if self.temperature is not None else None
        heads, views, gates = {}, {}, {}
        for m in self.expert_modalities:
            if self.experts is None:
                heads[m] = st.raw[m].index_select(0, head)
                continue
            remoke = self.experts[m]
            if torch.is_grad_enabled() and not (remoke.training and remoke.dropout > 0):
                # Same values as gathering the all-entity views (the experts are row-wise
                # and deterministic here), but the backward of a gather would build a
                # zero-filled [N, K, d] gradient per modality; recomputing B rows costs
                # B d_in K d multiply-adds and sends the gradient to [N, d_in] inputs.
                v = remoke.experts(st.raw[m].index_select(0, head))
            else:
                v = st.views[m].index_select(0, head)
            g = ReMoKE.gates(st.logits[m].index_select(0, head), temp)
            heads[m], views[m], gates[m] = ReMoKE.mix(g, v), v, g
        return heads, views, gates

    @torch.no_grad()
    def head_views(self, head: Tensor) -> Dict[str, Tensor]:
        r"""The expert views ``{m: [B, K, d_m]}`` (float32) of the entities :obj:`head` under
        the current parameters -- what the official training script recomputes for the
        :math:`Q_\theta` step *after* the model's update (``TrainConfig.q_views="updated"``).
        Empty without experts."""
        if self.experts is None:
            return {}
        return {m: self.experts[m].experts(self.inputs[m]().index_select(0, head)).float()
                for m in self.expert_modalities}

    def _queries(self, head: Tensor, rel: Tensor):
        self._check_ids(head, rel)
        st = self._entity_state()
        return (st, ) + self._heads(head, rel, st)

    def forward(self, head: Tensor, rel: Tensor) -> MoMoKOutput:
        r"""Scores all entities as tails of the queries ``(head, rel, ?)`` (``[B]`` each)."""
        st, heads, views, gates = self._queries(head, rel)
        scores, weights = self.mujod(heads, rel, st.cand, st.mats)
        return MoMoKOutput(scores, views, gates, weights)

    def forward_loss(self, head: Tensor, rel: Tensor, target: Tensor) -> MoMoKLoss:
        r"""The training step's forward: :math:`\mathcal{L}_{kgc}` of the queries
        ``(head, rel, ?)`` against the multi-hot ``target`` ``[B, N]`` (dense or sparse), equal
        in value and gradients to ``kgc_loss(self(head, rel).scores, target)`` but keeping no
        ``[B, N]`` tensor for backward (see :meth:`MuJoD.forward_loss`)."""
        st, heads, views, gates = self._queries(head, rel)
        loss, weights = self.mujod.forward_loss(heads, rel, st.cand, target)
        return MoMoKLoss(loss, views, gates, weights)

    def forward_loss_sampled(self, head: Tensor, rel: Tensor, target: Tensor,
                             candidates: Tensor, logit_shift: Optional[Tensor] = None
                             ) -> MoMoKLoss:
        r"""The training step against a candidate subset: :obj:`candidates` ``[C]`` entity
        ids, :obj:`target` ``[B, C]`` multi-hot over them, :obj:`logit_shift` ``[C]`` added to
        every modality's logits (the sampling correction, see
        :func:`momok_pyg.training.batching.sample_candidates`). Experts, gates and the joint
        fusion run on the heads and candidates only, so a step costs :math:`O(B + C)`
        entity rows instead of :math:`O(N)`."""
        self._check_ids(head, rel)
        index, inverse = torch.unique(torch.cat([head, candidates]), return_inverse=True)
        st = self._compute_state(index)
        heads, views, gates = self._heads(inverse[:head.numel()], rel, st)
        pos = inverse[head.numel():]
        cand = {m: c.index_select(0, pos) for m, c in st.cand.items()}
        loss, weights = self.mujod.forward_loss(heads, rel, cand, target, logit_shift)
        return MoMoKLoss(loss, views, gates, weights)

    def kgc_loss(self, scores: Mapping[str, Tensor], target: Tensor) -> Tensor:
        r""":math:`\mathcal{L}_{kgc} = \sum_m \mathcal{L}_m` for a multi-hot ``target``
        ``[B, N]`` (1 = true tail)."""
        return self.mujod.loss(scores, target)

    def aggregate_scores(self, scores: Mapping[str, Tensor],
                         modalities: Optional[List[str]] = None) -> Tensor:
        r"""The joint decision ``[B, N]`` over ``modalities`` (default: all scored)."""
        return self.mujod.aggregate(scores, modalities)

    @torch.no_grad()
    def predict(self, head: Tensor, rel: Tensor,
                modalities: Optional[List[str]] = None,
                out: Optional[Tensor] = None,
                candidates: Optional[slice] = None) -> Tensor:
        r"""Eval-mode joint scores ``[B, N]`` of all tails for ``(head, rel, ?)`` (the
        training flag is restored afterwards). Use :meth:`cached_entities` around a whole
        evaluation pass to compute the all-entity part once. ``out``: an optional float32
        ``[B, N]`` tensor the scores are written into (see
        :meth:`~momok_pyg.nn.MuJoD.aggregate_queries`). ``candidates``: a slice of entity
        ids to score instead of all (``[B, c1 - c0]``; chunked evaluation)."""
        was_training = self.training
        self.eval()
        try:
            modalities = self.mujod.check_modalities(modalities)
            st, heads = self._queries(head, rel)[:2]
            q = self.mujod.queries(heads, rel, st.mats)[0]
            return self.mujod.aggregate_queries(q, st.cand, modalities, st.concat, out,
                                                candidates)
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return (f"num_entities={self.num_entities}, "
                f"num_relations={self.num_relations}, modalities={self.expert_modalities}, "
                f"dim={self.dim}, num_experts={self.num_experts}, "
                f"scored={self.score_modalities}, exid={self.exid is not None}")
