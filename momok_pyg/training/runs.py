r"""Public entry points over run directories: :func:`train` (one model, or the
"w/o joint training" ensemble of single-modality models), :func:`load_model`,
:func:`evaluate_run` and :func:`evaluation_report`."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from momok_pyg.datasets.schema import SPLITS

from .checkpoint import atomic_write_json, load_checkpoint, remove_stale_tmp
from .config import TrainConfig
from .device import model_device, resolve_device
from .ensemble import EnsembleScorer
from .loop import (
    BEST,
    CONFIG,
    LAST,
    MEMBER_PREFIX,
    METRICS,
    PathLike,
    _check_modalities,
    _evaluate,
    _scalars,
    build_model,
    environment,
    fit,
    load_data,
    member_names,
)

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData


def train(config: TrainConfig, out_dir: PathLike, data: Optional[HeteroData] = None,
          resume: bool = True,
          overwrite: bool = False, log: Optional[Callable[[str], None]] = None
          ) -> Dict[str, Any]:
    r"""Trains, selects on valid and tests the model of :obj:`config` in the run directory
    :obj:`out_dir` (``config.json``, ``metrics.json``, ``best.pt``, ``last.pt``).

    With ``config.joint=False`` (w/o joint training), one single-modality MoMoK per modality
    is trained in ``out_dir/member-<modality>/`` and the sum of their scores
    (:class:`EnsembleScorer`) is evaluated; the top-level ``metrics.json`` reports it, with
    each member's own test metrics under ``"per_modality"``.

    Args:
        config (TrainConfig): The run's settings.
        out_dir: The run directory. If it holds ``last.pt`` the run resumes from it
            (:obj:`resume`), unless :obj:`overwrite` is set.
        data (HeteroData, optional): The MMKG; default: loaded from :obj:`config`.
    Returns:
        The content of ``metrics.json``.
    """
    from . import distributed
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    # under torchrun: one process group for the whole run (all members of an ensemble)
    created = distributed.setup(resolve_device(config.device))[2]
    try:
        data = load_data(config) if data is None else data
        if _single(config):
            return fit(config, out_dir, data, resume=resume, overwrite=overwrite, log=log)
        return _train_ensemble(config, Path(out_dir), data, resume, overwrite, log)
    finally:
        distributed.teardown(created)
        torch.set_num_threads(old_threads)


def _single(config: TrainConfig) -> bool:
    r"""Whether :obj:`config` trains one model (not the "w/o joint training" ensemble)."""
    return config.joint or config.model != "momok" or config.member is not None


def _last_places(items: List[str]) -> List[str]:
    r""":obj:`items` without repeats, each at the place of its last occurrence."""
    return list(reversed(dict.fromkeys(reversed(items))))


def _train_ensemble(config: TrainConfig, out: Path, data: HeteroData, resume: bool, overwrite: bool,
                    log) -> Dict[str, Any]:
    from . import distributed
    main = distributed.rank() == 0
    log = (log or (lambda s: tqdm.write(s))) if main else (lambda s: None)
    wall0 = time.perf_counter()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out)
        if overwrite:
            for name in (LAST, BEST, METRICS, CONFIG):
                (out / name).unlink(missing_ok=True)
        config.save(out / CONFIG)
    distributed.barrier()
    names = member_names(config, data)
    if config.eval_modalities is not None:
        unknown = [m for m in config.eval_modalities if m not in names]
        if unknown:
            raise ValueError(f"eval_modalities {unknown} not in the ensemble's members {names}")
    member_metrics = {}
    for m in names:
        member_metrics[m] = fit(dataclasses.replace(config, member=m),
                                out / f"{MEMBER_PREFIX}{m}", data, resume=resume,
                                overwrite=overwrite, log=log)
    ensemble = load_model(out, data=data)[0]
    from momok_pyg.evaluate import FilterIndex
    filter_index = FilterIndex.from_data(data)
    t0 = time.perf_counter()
    shard = distributed.world() > 1
    valid = _evaluate(ensemble, data, "valid", config, filter_index, config.eval_modalities,
                      shard=shard)
    test = _evaluate(ensemble, data, "test", config, filter_index, config.eval_modalities,
                     breakdowns=True, shard=shard)
    final_eval = time.perf_counter() - t0
    env = environment(model_device(ensemble))
    metrics = {
        "dataset": getattr(data, "dataset_name", config.dataset),
        "model": "momok-ensemble (w/o joint training)",
        "members": names,
        # each member trains and stops on its own: its epochs read like a single run's
        "member_epochs": {m: {k: member_metrics[m][k]
                              for k in ("best_epoch", "epochs_run", "stopped_early")}
                          for m in names},
        "best_valid": _scalars(valid),
        "test": test,
        "per_modality": {m: _scalars(member_metrics[m]["test"]) for m in names},
        "member_valid_curves": {m: member_metrics[m]["valid_curve"] for m in names},
        "timing": {
            "member_seconds": {m: member_metrics[m]["timing"]["elapsed_seconds"]
                               for m in names},
            "final_eval_seconds": final_eval,
            "elapsed_seconds": sum(member_metrics[m]["timing"]["elapsed_seconds"]
                                   for m in names) + final_eval,
            "wall_seconds_this_process": time.perf_counter() - wall0,
        },
        "num_parameters": int(sum(p.numel() for p in ensemble.parameters())),
        "config": config.to_dict(),
        "env": env,
        # the commits the members trained under (one after another), then the one of this
        # final evaluation; a commit seen twice keeps its last place
        "git_commits": _last_places(
            [c for m in names for c in member_metrics[m].get("git_commits", [])]
            + ([env["git_commit"]] if env.get("git_commit") else [])),
        # each member's (re)starts, tagged with the member
        "starts": [{"member": m, **st} for m in names
                   for st in member_metrics[m].get("starts") or []],
    }
    if main:
        atomic_write_json(metrics, out / METRICS)
    distributed.barrier()
    log(f"[{out.name}] ensemble of {names}: test mrr {test['mrr']:.4f}")
    return metrics


# ---------------------------------------------------------------------------------------------
# loading a finished run
# ---------------------------------------------------------------------------------------------
def load_model(run_dir: PathLike, data: Optional[HeteroData] = None, which: str = "best",
               device: Optional[str] = None) -> Tuple[torch.nn.Module, Any, TrainConfig]:
    r"""``(model, data, config)`` of a run directory, the model in ``eval()`` mode with the
    weights of ``best.pt`` (or ``last.pt`` with ``which="last"``), on :obj:`device` (default:
    the run's ``config.device``, see :func:`~momok_pyg.training.device.resolve_device`). An
    ensemble run (``joint=False``) gives an :class:`EnsembleScorer` over its members'
    checkpoints."""
    run = Path(run_dir)
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    cfg_path = run / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no {CONFIG})")
    config = TrainConfig.load(cfg_path)
    data = load_data(config) if data is None else data
    fname = BEST if which == "best" else LAST
    if _single(config):
        model = build_model(config, data)
        model.load_state_dict(load_checkpoint(run / fname)["model"])
    else:
        members = {}
        for m in member_names(config, data):
            member = build_model(dataclasses.replace(config, member=m), data)
            ckpt = load_checkpoint(run / f"{MEMBER_PREFIX}{m}" / fname)
            member.load_state_dict(ckpt["model"])
            members[m] = member
        model = EnsembleScorer(members)
    model.to(resolve_device(config.device if device is None else device))
    model.eval()
    return model, data, config


def evaluate_run(run_dir: PathLike, split: str = "test",
                 modalities: Optional[Sequence[str]] = None, data: Optional[HeteroData] = None,
                 breakdowns: bool = True, which: str = "best",
                 progress: bool = False, device: Optional[str] = None,
                 filter_splits: Sequence[str] = SPLITS,
                 tie: Optional[str] = None) -> Dict[str, Any]:
    r"""Re-evaluates the checkpoint of a run on :obj:`split`, both directions, filtered by
    the triples of :obj:`filter_splits` (default: all splits; ``()``: raw ranks) with
    :obj:`tie` (default: the run's, see :mod:`momok_pyg.metrics`)."""
    model, data, config = load_model(run_dir, data=data, which=which, device=device)
    mods = config.eval_modalities if modalities is None else list(modalities)
    _check_modalities(model, mods)
    from momok_pyg.evaluate import FilterIndex
    if tie is not None:
        config = dataclasses.replace(config, tie=tie)
    return _evaluate(model, data, split, config, FilterIndex.from_data(data, filter_splits),
                     mods, breakdowns=breakdowns, progress=progress)


#: the filters of :func:`evaluation_report`, from the standard one (every known triple) to
#: none (raw ranks)
EVALUATION_FILTERS: Tuple[Tuple[str, ...], ...] = (SPLITS, ("train", "valid"), ("train",), ())


def evaluation_report(run_dir: PathLike, split: str = "test", which: str = "best",
                      device: Optional[str] = None) -> Dict[str, Any]:
    r"""The metrics of a run's checkpoint on :obj:`split` under other evaluation protocols:
    for every filter of :data:`EVALUATION_FILTERS` (the known answers removed from the
    candidates: the triples of all splits, of train and valid, of train only, or none = raw)
    and every tie mode (:data:`~momok_pyg.metrics.TIES`), MRR, MR and Hits@k of both
    directions and the MRR of each direction (``head``: :math:`(?, r, t)`; ``tail``:
    :math:`(h, r, ?)`). A paper's figure that no protocol gives cannot come from the
    protocol alone."""
    from momok_pyg.evaluate import FilterIndex
    from momok_pyg.metrics import TIES, rank_metrics
    model, data, config = load_model(run_dir, which=which, device=device)
    mods = config.eval_modalities
    rows = []
    for splits in EVALUATION_FILTERS:
        index = FilterIndex.from_data(data, splits)
        ranks = {tie: torch.tensor(_evaluate(model, data, split,
                                             dataclasses.replace(config, tie=tie), index, mods,
                                             return_ranks=True)["ranks"], dtype=torch.float64)
                 for tie in ("optimistic", "pessimistic")}
        # the realistic rank 1 + g + u/2 is the mean of the other two (momok_pyg.metrics)
        ranks["realistic"] = (ranks["optimistic"] + ranks["pessimistic"]) / 2
        for tie in TIES:
            r = ranks[tie]
            half = r.numel() // 2  # tail queries, then head queries (query_tensors)
            rows.append({"filter": list(splits), "tie": tie, **rank_metrics(r),
                         "head_mrr": rank_metrics(r[half:])["mrr"],
                         "tail_mrr": rank_metrics(r[:half])["mrr"]})
    return {"split": split, "which": which, "protocols": rows,
            "env": environment(model_device(model))}
