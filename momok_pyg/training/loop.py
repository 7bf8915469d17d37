r"""1-N training of MoMoK / TuckER with best-valid model selection, early stopping and exact
checkpoint/resume: :func:`fit`. One optimisation step and one epoch are in
:mod:`momok_pyg.training.step`.

Selection: every ``eval_every`` epochs the model is ranked on **valid**; the epoch with the
highest valid MRR (of all valid triples, or of those not in train with
``select_on="valid_not_in_train"``) is kept as ``best.pt``; training stops after ``patience``
evaluations without improvement (``patience=0`` disables early stopping). The reported test
metrics are those of ``best.pt`` -- one checkpoint, chosen without looking at the test set.
With ``track_test`` the test split is also ranked at every evaluation and its curve kept, for
the upstream-style report only; it never influences the selection. With ``lr_decay < 1``
the learning rate is multiplied by it after every epoch (the original TuckER's schedule).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from momok_pyg.datasets.schema import STRUCTURE, feature_modalities, get_triples
from momok_pyg.machine import cpu_model

from . import distributed
from .batching import OneToNQueries
from .checkpoint import (
    atomic_torch_save,
    atomic_write_json,
    get_rng_state,
    git_commit,
    load_checkpoint,
    remove_stale_tmp,
    seed_everything,
    set_rng_state,
)
from .config import SYNTHETIC, TrainConfig
from .device import (
    device_info,
    model_device,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
)
from .step import build_optimizers, train_epoch

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

PathLike = Union[str, os.PathLike]
CONFIG, METRICS, LAST, BEST = "config.json", "metrics.json", "last.pt", "best.pt"
#: a small JSON beside ``last.pt``, rewritten with it: how far an unfinished run is
PROGRESS = "progress.json"
MEMBER_PREFIX = "member-"


# ---------------------------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------------------------
def load_data(config: TrainConfig):
    r"""The MMKG :class:`~torch_geometric.data.HeteroData` described by :obj:`config`."""
    if config.dataset == SYNTHETIC:
        from momok_pyg.datasets.synthetic import make_synthetic_mmkg
        data = make_synthetic_mmkg(**{"seed": 0, **config.synthetic})
    else:
        from momok_pyg.datasets import load_dataset
        features = None if config.features in (None, "none") else config.features
        out = load_dataset(config.dataset, root=config.root, features=features,
                           raw_from=config.raw_from)
        data = out if hasattr(out, "node_types") else out[0]
    if config.transforms:
        import momok_pyg.transforms as T
        for t in config.transforms:
            kwargs = {k: v for k, v in t.items() if k != "name"}
            data = getattr(T, t["name"])(**kwargs)(data)
    return data


def usable_modalities(data: HeteroData) -> List[str]:
    r"""The feature modalities of :obj:`data` that at least one entity has (e.g. MKG-W's
    name-derived text is missing for every entity: its names are bare Wikidata ids)."""
    out = []
    for m in feature_modalities(data):
        if bool(data["entity"][f"{m}_mask"].any()):
            out.append(m)
        else:
            warnings.warn(f"modality {m!r} is missing for every entity of "
                          f"{getattr(data, 'dataset_name', 'the dataset')}; training without "
                          f"it", UserWarning, stacklevel=3)
    return out


def member_names(config: TrainConfig, data: HeteroData) -> List[str]:
    r"""The single-modality models of the "w/o joint training" ablation."""
    return [STRUCTURE] + usable_modalities(data)


def build_model(config: TrainConfig, data: HeteroData) -> torch.nn.Module:
    r"""A freshly initialised model for :obj:`config` (seeded by ``config.seed``).

    With ``config.member`` set, the single-modality MoMoK of that modality (one model of the
    "w/o joint training" ablation).
    """
    member = config.member
    from momok_pyg.nn import MoMoK, TuckER
    from momok_pyg.nn.kge import KGE_MODELS, KGEScorer
    torch.manual_seed(config.seed)
    if config.model in KGE_MODELS:
        return KGEScorer.from_data(data, model=config.model, dim=config.dim, loss=config.loss,
                                   label_smoothing=config.label_smoothing,
                                   **config.model_kwargs)
    encoder = {}
    if config.structure_encoder is not None and member in (None, STRUCTURE):
        from momok_pyg.nn.encoders import build_encoder
        encoder["structure_encoder"] = build_encoder(config.structure_encoder, config.dim,
                                                     int(data.num_relations))
    if config.model == "tucker":
        kw = dict(dim=config.dim, rel_dim=config.rel_dim, loss=config.loss,
                  label_smoothing=config.label_smoothing)
        kw.update(config.model_kwargs)
        return TuckER.from_data(data, **kw, **encoder)
    if member is None:
        kw = config.model_kwargs_for()
        if "modalities" not in config.model_kwargs:
            kw["modalities"] = usable_modalities(data)
        return MoMoK.from_data(data, **kw, **encoder)
    if member == STRUCTURE:
        kw = config.model_kwargs_for(modalities=[], use_structure=True, joint=False)
    else:
        kw = config.model_kwargs_for(modalities=[member], use_structure=False, joint=False)
    return MoMoK.from_data(data, **kw, **encoder)


def _check_modalities(model: torch.nn.Module, modalities: Optional[Sequence[str]]) -> None:
    if modalities is None:
        return
    known = list(model.score_modalities)
    unknown = [m for m in modalities if m not in known]
    if unknown:
        raise ValueError(f"eval_modalities {unknown} not scored by this model; expected a "
                         f"subset of {known}")


def scorer(model: torch.nn.Module, modalities: Optional[Sequence[str]] = None,
           reuse_output: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``score_fn(head, rel) -> [B, N]`` of :obj:`model` restricted to :obj:`modalities`.

    With :obj:`reuse_output`, every call writes its scores into one float32 buffer kept by
    the closure (``model.predict(..., out=...)``) and returns a view of it: the next call
    overwrites them. That suits a ranking loop that consumes each batch before asking for
    the next (:func:`~momok_pyg.evaluate.evaluate_link_prediction`), and saves a fresh
    ``[B, N]`` allocation per batch (on CPU, tens of MB of page faults each). Models whose
    ``predict`` takes no ``out`` are scored as without it."""
    mods = None if modalities is None else list(modalities)
    buffer: List[Optional[Tensor]] = [None]
    reuse_output = reuse_output and "out" in inspect.signature(model.predict).parameters

    def score_fn(head: Tensor, rel: Tensor, candidates: Optional[slice] = None) -> Tensor:
        if candidates is not None:  # a chunk of the candidates (bounded-memory evaluation)
            return model.predict(head, rel, modalities=mods, candidates=candidates).float()
        if not reuse_output:
            return model.predict(head, rel, modalities=mods).float()
        buf = buffer[0]
        if buf is None or buf.size(0) < head.numel() or buf.device != head.device:
            buf = buffer[0] = torch.empty(head.numel(), model.num_entities,
                                          device=head.device)
        return model.predict(head, rel, modalities=mods, out=buf[:head.numel()])

    return score_fn


def _evaluate(model, data: HeteroData, split, config, filter_index, modalities=None,
              breakdowns=False,
              progress=False, subsets=None, shard: bool = False,
              return_ranks: bool = False) -> Dict[str, Any]:
    from momok_pyg.evaluate import evaluate_link_prediction
    was_training = model.training
    model.eval()
    cache = getattr(model, "cached_entities", None)
    try:
        with cache() if cache is not None else contextlib.nullcontext():
            out = evaluate_link_prediction(scorer(model, modalities, reuse_output=True), data,
                                           split=split, batch_size=config.eval_batch_size,
                                           filter_index=filter_index, tie=config.tie,
                                           breakdowns=breakdowns, progress=progress,
                                           subsets=subsets, device=model_device(model),
                                           candidate_chunk=config.eval_candidate_chunk,
                                           shard=shard, return_ranks=return_ranks)
    finally:
        model.train(was_training)
    return _jsonable(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return x.tolist()
    return x


def environment(device: Optional[torch.device] = None) -> Dict[str, Any]:
    r"""Versions, git commit, thread count, CPU and device (with the GPU's name and memory
    on CUDA), recorded in ``metrics.json``."""
    import momok_pyg
    here = Path(__file__).resolve().parent
    return {
        "momok_pyg": momok_pyg.__version__,
        "git_commit": git_commit(here),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        **device_info(device if device is not None else torch.device("cpu")),
    }


_START_KEYS = ("git_commit", "cpu", "cpu_model", "cpu_count", "threads", "device", "gpu_name",
               "torch", "world_size")


def start_record(env: Dict[str, Any], after_epoch: Optional[int]) -> Dict[str, Any]:
    r"""One entry of a run's ``starts``: the epoch the (re)start resumed after
    (:obj:`after_epoch`, ``0`` for a fresh run, ``None`` when unknown) and the code, machine
    and thread count of :obj:`env` (see :func:`environment`)."""
    # plain str (torch.__version__ is a str subclass that weights-only loading refuses)
    return {"after_epoch": after_epoch,
            **{k: str(env[k]) if isinstance(env[k], str) else env[k]
               for k in _START_KEYS if k in env}}


# ---------------------------------------------------------------------------------------------
# a full run
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fresh_state() -> Dict[str, Any]:
    return {"epoch": 0, "commits": [], "starts": [], "best_epoch": None,
            "best_valid_mrr": -math.inf, "best_valid": None,
            "bad_evals": 0, "stopped_early": False, "valid_curve": [], "train_curve": [],
            "test_curve": [], "epoch_seconds": [], "eval_seconds": 0.0,
            "elapsed_seconds": 0.0}


def selection_mrr(valid: Dict[str, Any], select_on: str) -> float:
    r"""The valid MRR that :obj:`select_on` selects by (see ``TrainConfig.select_on``)."""
    if select_on == "valid_not_in_train":
        return float(valid["not_in_train"]["mrr"])
    return float(valid["mrr"])


def _curve_entry(epoch: int, m: Dict[str, Any]) -> Dict[str, Any]:
    entry = {"epoch": epoch, **_scalars(m)}
    if "not_in_train" in m:
        entry["not_in_train"] = _scalars(m["not_in_train"])
    return entry


def progress(state: Dict[str, Any], config: TrainConfig) -> Dict[str, Any]:
    r"""What ``progress.json`` holds: the epoch reached of ``config.epochs``, the best
    selection MRR so far and its epoch, whether early stopping fired, the training seconds
    so far and the commits the run trained under (read by ``momok-pyg reproduce --list``
    without loading the checkpoint)."""
    best = state["best_valid_mrr"]
    return {"epoch": state["epoch"], "epochs": config.epochs, "select_on": config.select_on,
            "best_epoch": state["best_epoch"],
            "best_valid_mrr": None if best == -math.inf else best,
            "stopped_early": state["stopped_early"],
            "elapsed_seconds": state["elapsed_seconds"], "commits": state["commits"]}


def read_progress(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    r"""The ``progress.json`` of :obj:`run_dir` (see :func:`progress`), or ``None`` when the
    run has not written one."""
    return _read_json(Path(run_dir) / PROGRESS)


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool
                     ) -> Optional[Dict[str, Any]]:
    r"""Creates/cleans :obj:`out`; returns the ``last.pt`` to resume from (or ``None``)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    last = out / LAST
    if overwrite:
        for name in (LAST, BEST, METRICS, CONFIG, PROGRESS):
            (out / name).unlink(missing_ok=True)
        for member in out.glob(f"{MEMBER_PREFIX}*"):
            if member.is_dir():
                shutil.rmtree(member)
        return None
    if not last.exists():
        return None
    if not resume:
        raise FileExistsError(f"{out}: holds a checkpoint ({LAST}); pass resume=True "
                              f"(--resume) to continue it or overwrite=True (--overwrite) "
                              f"to start afresh")
    ckpt = load_checkpoint(last)
    old = TrainConfig.from_dict(ckpt["config"])
    diff = config.resume_mismatch(old)
    if diff:
        raise ValueError(f"{last}: cannot resume, these settings differ from the checkpoint: "
                         + ", ".join(f"{k} ({getattr(old, k)!r} -> {getattr(config, k)!r})"
                                     for k in diff) + "; pass --overwrite to start afresh")
    return ckpt


def fit(config: TrainConfig, out_dir: PathLike, data: Optional[HeteroData] = None,
        resume: bool = True,
        overwrite: bool = False, log: Optional[Callable[[str], None]] = None
        ) -> Dict[str, Any]:
    r"""Trains ONE model (MoMoK, TuckER or one single-modality member) in :obj:`out_dir`,
    resuming from ``last.pt`` if present; returns its ``metrics.json`` content.

    See :func:`train` for the public entry point (it also handles the ensemble ablation).
    """
    device = resolve_device(config.device)
    rank, world, created = distributed.setup(device)
    try:
        return _fit(config, Path(out_dir), data, resume, overwrite, log, device, rank, world)
    finally:
        distributed.teardown(created)


def _fit(config: TrainConfig, out: Path, data: Optional[HeteroData], resume: bool,
         overwrite: bool, log: Optional[Callable[[str], None]], device: torch.device,
         rank: int, world: int) -> Dict[str, Any]:
    main = rank == 0  # the process that writes files and logs
    log = (log or (lambda s: tqdm.write(s))) if main else (lambda s: None)
    member = config.member
    data = load_data(config) if data is None else data
    if main:
        ckpt = _prepare_run_dir(out, config, resume, overwrite)
        config.save(out / CONFIG)
    distributed.barrier()
    if not main:
        ckpt = load_checkpoint(out / LAST) if (out / LAST).exists() else None
    wall0 = time.perf_counter()

    model = build_model(config, data).to(device)
    reset_peak_memory(device)
    previous_start = _read_json(out / "env_start.json")  # the last (re)start's record
    start_env = {**environment(device), "world_size": world}
    if main:  # the code and the model's effective settings (defaults included) at start
        atomic_write_json({"env": start_env,
                           "model": repr(model)}, out / "env_start.json")
    _check_modalities(model, config.eval_modalities if member is None else None)
    # under DDP an optimizer step inside backward would run before the gradient is averaged
    optimizer, q_optimizer = build_optimizers(
        model, dataclasses.replace(config, optimizer_in_backward=False) if world > 1 else config)
    ddp = distributed.wrap(model, device) if world > 1 else None
    seed_everything(config.seed)
    state = _fresh_state()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if q_optimizer is not None and ckpt.get("q_optimizer") is not None:
            q_optimizer.load_state_dict(ckpt["q_optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        state.setdefault("test_curve", [])
        log(f"[{out}] resumed after epoch {state['epoch']}")
    # the code of every (re)start, in order: a run resumed after a commit trained under both
    start_commit = start_env["git_commit"]
    if "commits" not in state:  # a checkpoint from before commit tracking: its last start
        state["commits"] = ([] if ckpt is None else
                            [((previous_start or {}).get("env") or {}).get("git_commit",
                                                                           "unknown")])
    if not state["commits"] or state["commits"][-1] != start_commit:
        state["commits"].append(start_commit)
    # where every (re)start ran and from which epoch on, so that epoch_seconds can be read
    # per machine and thread count; a checkpoint from before starts were tracked keeps only
    # its last start, from env_start.json, with the epoch it began at unknown (None)
    if "starts" not in state:
        old_env = (previous_start or {}).get("env")
        state["starts"] = ([] if ckpt is None or not old_env else
                           [start_record(old_env, None)])
    state["starts"].append(start_record(start_env, state["epoch"]))

    from momok_pyg.evaluate import FilterIndex
    filter_index = FilterIndex.from_data(data)
    train_triples = get_triples(data, "train")
    queries = OneToNQueries(train_triples, data["entity"].num_nodes, data.num_relations)
    eval_mods = config.eval_modalities if member is None else None
    from momok_pyg.evaluate import in_train_mask
    valid_subsets = {"not_in_train": ~in_train_mask(data, "valid")}

    def evaluate_valid(epoch: int) -> Dict[str, Any]:
        t1 = time.perf_counter()
        valid = _evaluate(model, data, "valid", config, filter_index, eval_mods,
                          subsets=valid_subsets, shard=world > 1)
        state["valid_curve"].append(_curve_entry(epoch, valid))
        if config.track_test:
            test = _evaluate(model, data, "test", config, filter_index, eval_mods,
                             shard=world > 1)
            state["test_curve"].append(_curve_entry(epoch, test))
        state["eval_seconds"] += time.perf_counter() - t1
        return valid

    def save_last() -> None:
        if not main:
            return
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "q_optimizer": q_optimizer.state_dict() if q_optimizer is not None else None,
            "state": state, "rng": get_rng_state(), "config": config.to_dict()}, out / LAST)
        atomic_write_json(progress(state, config), out / PROGRESS)

    def save_best(epoch: int, valid: Dict[str, Any]) -> None:
        if not main:
            return
        atomic_torch_save({"model": model.state_dict(), "epoch": epoch,
                           "valid": _scalars(valid), "config": config.to_dict()}, out / BEST)

    epoch = state["epoch"]
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["stopped_early"]:
            break
        t0 = time.perf_counter()
        losses = train_epoch(model, queries, optimizer, q_optimizer, config, epoch,
                             progress=config.progress and main, ddp=ddp)
        state["epoch_seconds"].append(time.perf_counter() - t0)
        state["train_curve"].append({"epoch": epoch, **losses})
        msg = f"epoch {epoch}/{config.epochs} loss {losses['loss']:.5f}"
        if config.lr_decay != 1.0:
            for group in optimizer.param_groups:
                group["lr"] *= config.lr_decay
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            valid = evaluate_valid(epoch)
            score = selection_mrr(valid, config.select_on)
            msg += f" | valid mrr {valid['mrr']:.4f} hits@10 {valid['hits@10']:.4f}"
            if config.select_on != "valid":
                msg += f" | {config.select_on} mrr {score:.4f}"
            if score > state["best_valid_mrr"]:
                state.update(best_epoch=epoch, best_valid_mrr=score,
                             best_valid=_curve_entry(epoch, valid), bad_evals=0)
                save_best(epoch, valid)
                msg += " *"
            else:
                state["bad_evals"] += 1
                if config.patience > 0 and state["bad_evals"] >= config.patience:
                    state["stopped_early"] = True
                    msg += f" | early stop ({config.patience} evaluations without improvement)"
        state["epoch"] = epoch
        state["elapsed_seconds"] += time.perf_counter() - t0
        save_last()
        log(f"[{out.name}] {msg}")

    if state["best_epoch"] is None:  # no evaluation happened (epochs = 0)
        valid = evaluate_valid(state["epoch"])
        state.update(best_epoch=state["epoch"],
                     best_valid_mrr=selection_mrr(valid, config.select_on),
                     best_valid=_curve_entry(state["epoch"], valid))
        save_best(state["epoch"], valid)
        save_last()

    # Test metrics of the best-valid checkpoint.
    distributed.barrier()  # rank 0 has written best.pt
    best = load_checkpoint(out / BEST)
    model.load_state_dict(best["model"])
    t2 = time.perf_counter()
    test = _evaluate(model, data, "test", config, filter_index, eval_mods, breakdowns=True,
                     shard=world > 1)
    per_modality = {}
    if member is None:
        for m in model.score_modalities:
            per_modality[m] = _evaluate(model, data, "test", config, filter_index, [m],
                                        shard=world > 1)
    final_eval = time.perf_counter() - t2
    metrics = _metrics(config, state, test, per_modality, final_eval,
                       time.perf_counter() - wall0, model, queries, data, member)
    metrics["world_size"] = world
    if main:
        atomic_write_json(metrics, out / METRICS)
    distributed.barrier()
    log(f"[{out.name}] best epoch {state['best_epoch']}: test mrr {test['mrr']:.4f} "
        f"hits@1 {test['hits@1']:.4f} hits@10 {test['hits@10']:.4f}")
    return metrics


def _scalars(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in m.items() if not isinstance(v, (dict, list))}


def _metrics(config, state, test, per_modality, final_eval, wall, model, queries, data: HeteroData,
             member) -> Dict[str, Any]:
    return {
        "dataset": getattr(data, "dataset_name", config.dataset),
        "model": config.model,
        "member": member,
        "best_epoch": state["best_epoch"],
        "best_valid": state["best_valid"],
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "test": test,
        "per_modality": per_modality,
        "select_on": config.select_on,
        "valid_curve": state["valid_curve"],
        "test_curve": state.get("test_curve", []),
        "train_curve": state["train_curve"],
        "timing": {
            "epoch_seconds": state["epoch_seconds"],
            "train_seconds": float(sum(state["epoch_seconds"])),
            "valid_eval_seconds": state["eval_seconds"],
            "final_eval_seconds": final_eval,
            "elapsed_seconds": state["elapsed_seconds"] + final_eval,
            "wall_seconds_this_process": wall,
        },
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "num_train_queries": len(queries),
        "config": config.to_dict(),
        # git_commit: the code that ran this process (its start), not the tree at the end
        "env": {**environment(model_device(model)),
                **({"git_commit": state["commits"][-1]} if state.get("commits") else {})},
        "git_commits": list(state.get("commits") or []),
        "starts": list(state.get("starts") or []),
        "peak_gpu_memory_mb": peak_memory_mb(model_device(model)),
    }
