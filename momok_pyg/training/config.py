r"""Training configuration, per-dataset presets and the ablation switches of the paper.

Ablations (paper Table 2 / Table 8) map onto :class:`momok_pyg.nn.MoMoK` keyword arguments:

===========================  ========================================================
switch                       effect
===========================  ========================================================
``rel_temperature=False``    w/o relational temperature (ReMoKE gate without :math:`\tau_r`)
``noise=False``              w/o the gate noise :math:`\delta`
``fusion="mean"``            w/o adaptive fusion (MuJoD averages the experts' views)
``joint=False``              w/o joint training: each modality is trained *alone* as its own
                             single-modality model; their scores are summed at inference
                             (:class:`momok_pyg.training.EnsembleScorer`)
``exid=False``               w/o ExID (no mutual-information upper bound, no Q networks)
``eval_modalities=[...]``    score with a subset of modalities at evaluation
===========================  ========================================================
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .memory import MAX_MMAP_THRESHOLD

SYNTHETIC = "synthetic"
SELECT_ON = ("valid", "valid_not_in_train")
#: ``model`` choices: MoMoK, the structure-only TuckER, and PyG's KGE models
#: (:mod:`momok_pyg.nn.kge`, trained 1-N in both directions; ``model_kwargs`` go to their
#: constructors, e.g. ``{"p_norm": 2.0}`` for TransE)
MODELS = ("momok", "tucker", "transe", "distmult", "complex", "rotate")
TRANSFORMS = ("LinkSparsify", "ModalityNoise", "ModalityMissing")

#: Paper / upstream hyper-parameters (K = 3 experts, lambda = 1e-4, batch 1024, Adam). The
#: upstream README gives lr/dim for MKG-W (1e-3 / 200) and MKG-Y (5e-4 / 300); DB15K and
#: KVC16K use the upstream train.py defaults (5e-4 / 256). Upstream trains 2000 epochs.
PRESETS: Dict[str, Dict[str, Any]] = {
    # The offline demo: ~50 s on a 2-core CPU. One thread: with 2 threads on a loaded 2-core
    # machine OpenMP oversubscription made the same run 8x slower (558 s vs 68 s).
    SYNTHETIC: dict(dim=64, lr=1e-2, epochs=16, eval_every=2, patience=5, batch_size=1024,
                    threads=1),
    "DB15K": dict(dim=256, lr=5e-4, epochs=2000, eval_every=10, patience=10),
    "MKG-W": dict(dim=200, lr=1e-3, epochs=2000, eval_every=10, patience=10),
    "MKG-Y": dict(dim=300, lr=5e-4, epochs=2000, eval_every=10, patience=10),
    "KVC16K": dict(dim=256, lr=5e-4, epochs=2000, eval_every=10, patience=10),
}
#: The two protocols of MoMoK (``protocol=`` / ``--protocol``). ``"paper"`` (the default)
#: is the paper's method as written: softmax cross-entropy per query, summed modality scores
#: at inference, the gate computed from the expert views, ExID over every pair of experts
#: with one variational network :math:`Q_{\theta,m}` per modality (the class defaults of
#: :class:`~momok_pyg.nn.MoMoK`, nothing to override). ``"official"`` is what the official
#: code runs: BCE against all entities with label smoothing 0.1 (target
#: :math:`(1-\varepsilon) y + 1/N`), the mean of the per-modality sigmoid scores at inference,
#: the gate computed from the raw feature, one random ordered expert pair per step sharing
#: one :math:`Q_{\theta,m}` with sampled CLUB negatives, relation embeddings of size 256,
#: and a :math:`Q_\theta` step on views recomputed after the model's update. The Tucker
#: dropouts (0.3 / 0.4 / 0.5) and the fusion (one dropout-linear-ReLU per head, two heads,
#: one shared attention vector) are the same in both.
#:
#: :math:`\lambda` is relative to the KGC loss as it is computed: per query, the softmax CE
#: gives an answer's score a gradient of about :math:`-1/B`, the official mean BCE over
#: :math:`B \times N` one of about :math:`-1/(BN)`. So the official
#: :math:`\lambda = 10^{-4}` weighs ExID about :math:`N` times (15,000 on MKG-Y) more
#: heavily against the KGC gradients than the same :math:`\lambda` does under ``"paper"``;
#: ``lambda_club = 1e-4 * N`` under ``"paper"`` matches the official balance.
PROTOCOLS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    "official": dict(loss="bce", label_smoothing=0.1, aggregate="mean_sigmoid", rel_dim=256,
                     q_views="updated",
                     model_kwargs=dict(gate_input="raw", exid_pairs="random",
                                       exid_shared=True, exid_sample=True)),
}

_ALIASES = {"mkgw": "MKG-W", "mkgy": "MKG-Y", "db15k": "DB15K", "kvc16k": "KVC16K",
            "kuai16k": "KVC16K", "fb15k237": "FB15k-237", "synthetic": SYNTHETIC}


def canonical_dataset(name: str) -> str:
    r"""``"mkg_w"``, ``"MKG-W"``, ``"mkgw"`` -> ``"MKG-W"`` (unknown names are returned
    unchanged, e.g. a custom dataset)."""
    key = name.lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key, name)


@dataclass
class TrainConfig:
    r"""Everything that defines one training run (saved as ``config.json``)."""
    # data
    dataset: str = SYNTHETIC
    features: Optional[str] = None
    root: str = "datasets"
    raw_from: Optional[str] = None
    synthetic: Dict[str, Any] = field(default_factory=dict)
    #: robustness transforms applied to the loaded MMKG, in order, each
    #: ``{"name": "LinkSparsify" | "ModalityNoise" | "ModalityMissing", **kwargs}``
    #: (:mod:`momok_pyg.transforms`; they change training-side data only)
    transforms: List[Dict[str, Any]] = field(default_factory=list)
    # model
    model: str = "momok"
    #: ``"paper"`` or ``"official"`` (see :data:`PROTOCOLS`); :meth:`for_dataset` applies the
    #: protocol's settings below any explicit override
    protocol: str = "paper"
    dim: int = 64
    rel_dim: Optional[int] = None
    num_experts: int = 3
    loss: str = "ce"
    label_smoothing: Optional[float] = None
    aggregate: str = "sum"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # ablations
    rel_temperature: bool = True
    noise: bool = True
    fusion: str = "attention"
    joint: bool = True
    exid: bool = True
    eval_modalities: Optional[List[str]] = None
    #: a graph encoder for the structure modality over the training graph,
    #: ``{"name": "rgcn", **kwargs}`` (:mod:`momok_pyg.nn.encoders`); MoMoK and TuckER only
    structure_encoder: Optional[Dict[str, Any]] = None
    #: set by the "w/o joint training" ablation on each of its single-modality models
    member: Optional[str] = None
    # optimisation
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 40
    lambda_club: float = 1e-4
    #: sampled-candidate training: score each batch against the union of its answers and
    #: this many uniformly drawn entities, with the log-Q shift
    #: (:func:`~momok_pyg.training.batching.sample_candidates`); ``None``: 1-N over all
    negatives: Optional[int] = None
    weight_decay: float = 0.0
    #: the expert views ExID's :math:`Q_\theta` step learns from: ``"forward"`` (the training
    #: step's own forward pass, before the model's update) or ``"updated"`` (recomputed for
    #: the batch's heads after the update, as the official train.py does)
    q_views: str = "forward"
    #: multiply the learning rate by this after every epoch (the original TuckER's
    #: ``ExponentialLR``; 1.0 = constant, as upstream MoMoK)
    lr_decay: float = 1.0
    #: update each parameter inside backward and free its gradient at once
    #: (:class:`~momok_pyg.training.optim.BackwardAdam`; same updates, less memory)
    optimizer_in_backward: bool = True
    # selection
    eval_every: int = 1
    patience: int = 5
    eval_batch_size: int = 1024
    #: rank the candidates in chunks of this many entities (peak memory bounded by
    #: ``eval_batch_size`` times the chunk instead of :math:`N`; same ranks); ``None``: all
    eval_candidate_chunk: Optional[int] = None
    tie: str = "realistic"
    #: the valid MRR that selects the checkpoint: ``"valid"`` (all valid triples) or
    #: ``"valid_not_in_train"`` (the valid triples that are not also training triples; on
    #: DB15K 8,719 of 9,904 valid triples are in train)
    select_on: str = "valid"
    #: also rank the **test** split at every valid evaluation and keep its curve, for the
    #: upstream-style report (each metric's maximum over these evaluations) that
    #: :mod:`momok_pyg.report` prints *beside* the best-valid one; it never selects anything
    track_test: bool = False
    # runtime
    #: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or
    #: ``"cuda:<i>"`` (:mod:`momok_pyg.training.device`); a checkpoint resumes on any device
    device: str = "auto"
    seed: int = 0
    threads: Optional[int] = None
    bf16: bool = False
    #: glibc's mmap threshold in bytes during training epochs (``None``: glibc's default, a
    #: threshold that grows); see :func:`~momok_pyg.training.memory.set_malloc_mmap_threshold`
    malloc_mmap_threshold: Optional[int] = 1 << 20
    progress: bool = True

    def __post_init__(self) -> None:
        self.dataset = canonical_dataset(self.dataset)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got "
                             f"{self.protocol!r}")
        if self.fusion not in ("attention", "mean"):
            raise ValueError(f"fusion must be 'attention' or 'mean', got {self.fusion!r}")
        for name in ("dim", "num_experts", "batch_size", "eval_every", "eval_batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.negatives is not None and (self.negatives <= 0 or self.loss != "ce"):
            raise ValueError(f"negatives must be a positive count and needs loss='ce' (the "
                             f"sampled softmax), got negatives={self.negatives!r}, "
                             f"loss={self.loss!r}")
        if self.eval_candidate_chunk is not None and self.eval_candidate_chunk <= 0:
            raise ValueError(f"eval_candidate_chunk must be positive or None, got "
                             f"{self.eval_candidate_chunk!r}")
        if self.epochs < 0 or self.patience < 0:
            raise ValueError("epochs and patience must be >= 0")
        if self.lr < 0 or self.lambda_club < 0:
            raise ValueError("lr and lambda_club must be >= 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.q_views not in ("forward", "updated"):
            raise ValueError(f"q_views must be 'forward' or 'updated', got {self.q_views!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.features is not None and self.features not in ("names", "official", "none"):
            raise ValueError(f"features must be 'names', 'official' or 'none', got "
                             f"{self.features!r}")
        from .device import check_device_spec
        check_device_spec(self.device)
        if self.structure_encoder is not None:
            self.structure_encoder = dict(self.structure_encoder)
            if self.structure_encoder.get("name") != "rgcn":
                raise ValueError(f"structure_encoder: expected {{'name': 'rgcn', ...}}, got "
                                 f"{self.structure_encoder!r}")
            if self.model not in ("momok", "tucker"):
                raise ValueError(f"structure_encoder applies to MoMoK and TuckER, not "
                                 f"{self.model!r}")
        self.transforms = [dict(t) for t in self.transforms]
        for t in self.transforms:
            if t.get("name") not in TRANSFORMS:
                raise ValueError(f"transforms: expected entries {{'name': one of {TRANSFORMS}, "
                                 f"...}}, got {t!r}")
        if self.eval_modalities is not None:
            self.eval_modalities = list(self.eval_modalities)
        if self.malloc_mmap_threshold is not None and not (
                0 < self.malloc_mmap_threshold <= MAX_MMAP_THRESHOLD):
            raise ValueError(f"malloc_mmap_threshold must be None or in (0, "
                             f"{MAX_MMAP_THRESHOLD}] bytes, got {self.malloc_mmap_threshold!r}")

    @classmethod
    def for_dataset(cls, dataset: str = SYNTHETIC, **overrides: Any) -> "TrainConfig":
        r"""The paper preset of :obj:`dataset` (see :data:`PRESETS`) with
        :obj:`overrides` (``None`` values are ignored) applied on top."""
        name = canonical_dataset(dataset)
        kw: Dict[str, Any] = dict(PRESETS.get(name, {}))
        overrides = {k: v for k, v in overrides.items() if v is not None}
        protocol = overrides.get("protocol", "paper")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        preset = {k: (dict(v) if isinstance(v, dict) else v)
                  for k, v in PROTOCOLS[protocol].items()}
        model_kwargs = {**preset.pop("model_kwargs", {}), **overrides.pop("model_kwargs", {})}
        kw.update(preset)
        kw.update(overrides)
        if model_kwargs:
            kw["model_kwargs"] = model_kwargs
        return cls(dataset=name, **kw)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; expected a subset of "
                             f"{sorted(known)}")
        return cls(**d)

    def save(self, path: Union[str, Path]) -> None:
        from .checkpoint import atomic_write_json
        atomic_write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TrainConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a TrainConfig JSON ({e})") from e
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    # Fields whose change makes an existing checkpoint incompatible with this run.
    RESUME_KEYS = ("dataset", "features", "synthetic", "transforms", "model", "protocol",
                   "dim", "rel_dim",
                   "num_experts", "loss", "label_smoothing", "aggregate", "model_kwargs",
                   "rel_temperature", "noise", "fusion", "joint", "exid", "member", "lr",
                   "structure_encoder",
                   "batch_size", "negatives",
                   "lambda_club", "weight_decay", "lr_decay", "seed", "eval_every", "q_views",
                   "eval_modalities", "tie", "select_on", "track_test")

    def resume_mismatch(self, other: "TrainConfig") -> List[str]:
        r"""Names of settings that differ between two configs and forbid resuming."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in self.RESUME_KEYS if a[k] != b[k]]

    # Fields that a finished run's result also depends on beyond RESUME_KEYS: its budget
    # and the arithmetic. Left out on purpose: paths, device, threads and memory settings.
    RESULT_KEYS = RESUME_KEYS + ("epochs", "patience", "bf16")

    def result_mismatch(self, other: "TrainConfig") -> List[str]:
        r"""Names of settings that differ between two configs such that a finished run of
        one does not stand for a run of the other (:data:`RESULT_KEYS`)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in self.RESULT_KEYS if a[k] != b[k]]

    def model_kwargs_for(self, modalities: Optional[List[str]] = None,
                         use_structure: bool = True, joint: Optional[bool] = None
                         ) -> Dict[str, Any]:
        r"""Keyword arguments of :meth:`momok_pyg.nn.MoMoK.from_data`."""
        kw: Dict[str, Any] = dict(
            dim=self.dim, rel_dim=self.rel_dim, num_experts=self.num_experts,
            use_structure=use_structure, joint=self.joint if joint is None else joint,
            fusion=self.fusion, noise=self.noise, rel_temperature=self.rel_temperature,
            exid=self.exid, loss=self.loss, label_smoothing=self.label_smoothing,
            aggregate=self.aggregate)
        if modalities is not None:
            kw["modalities"] = list(modalities)
        kw.update(self.model_kwargs)
        return kw
