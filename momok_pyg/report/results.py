r"""Reading the result JSON files of ``momok-pyg reproduce`` and the numbers derived
from them: the selected checkpoint's test MRR under another selection rule or budget, the
seed spread of a configuration, ExID's weight in the objective."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:
    from os import PathLike as _OsPathLike

    from momok_pyg.training import TrainConfig

    PathLike = Union[str, _OsPathLike]


#: ``{experiment: [result, ...]}``, every finished run of every experiment
AllResults = Dict[str, List[Dict[str, Any]]]


def load_all(results_dir: PathLike) -> Dict[str, List[Dict[str, Any]]]:
    r"""``{experiment: [result, ...]}`` of every ``<results_dir>/<experiment>/*.json``
    written by ``momok-pyg reproduce`` (files without an ``"experiment"`` key are skipped);
    each result gets ``"_file"``, its path relative to :obj:`results_dir`'s parent."""
    root = Path(results_dir)
    out: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for path in sorted(root.glob("*/*.json")):
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(res, dict) or "experiment" not in res:
            continue
        res["_file"] = str(path.relative_to(root.parent)) if root.parent != path else str(path)
        out[res["experiment"]].append(res)
    return dict(out)


def _test_at_best(r: Dict[str, Any], valid: List[Dict[str, Any]],
                  score: Callable[[Dict[str, Any]], float]) -> Optional[float]:
    r"""Test MRR of :obj:`r`'s tracked test curve at the evaluation of :obj:`valid` (entries
    of its valid curve) with the highest :obj:`score` (``None`` without either curve)."""
    test = {c["epoch"]: c for c in r.get("test_curve") or []}
    if not valid or not test:
        return None
    hit = test.get(max(valid, key=score)["epoch"])
    return None if hit is None else hit["mrr"]


def alt_selection_test(r: Dict[str, Any], key: str = "not_in_train") -> Optional[float]:
    r"""Test MRR at the evaluation that the valid MRR of the subset :obj:`key` (the valid
    triples not in train) would have selected, read from the run's tracked test curve
    (``None`` without one). Shows what selecting on that subset would have reported."""
    return _test_at_best(r, [c for c in r.get("valid_curve") or [] if key in c],
                         lambda c: c[key]["mrr"])


def selected_within(r: Dict[str, Any], max_epoch: int) -> Optional[float]:
    r"""Test MRR of :obj:`r` at its best valid evaluation among those at epochs
    :math:`\le` :obj:`max_epoch`, read from its tracked curves (``None`` without them): what
    the run would have reported with that epoch budget."""
    return _test_at_best(r, [c for c in r.get("valid_curve") or [] if c["epoch"] <= max_epoch],
                         lambda c: c["mrr"])


def selection_mrr(r: Dict[str, Any]) -> Optional[float]:
    r"""The valid MRR :obj:`r` selected its checkpoint on: on the valid triples not in train
    where it selected on those (``select_on``), else on all valid triples."""
    bv = r.get("best_valid") or {}
    if r.get("select_on") == "valid_not_in_train":
        return (bv.get("not_in_train") or {}).get("mrr")
    return bv.get("mrr")


def run_config(r: Dict[str, Any]) -> Optional[TrainConfig]:
    r"""The :class:`~momok_pyg.training.TrainConfig` of result :obj:`r` (``None`` without a
    config, or with one that this version cannot read)."""
    from momok_pyg.training import TrainConfig
    try:
        return TrainConfig.from_dict(r["config"])
    except (KeyError, TypeError, ValueError):
        return None


def seed_group(run: Dict[str, Any], everything: Optional[AllResults]
               ) -> List[Dict[str, Any]]:
    r"""The trained runs (of any experiment; a copied result counts once, as its original)
    whose configuration and budget equal :obj:`run`'s but for the seed
    (:meth:`~momok_pyg.training.TrainConfig.result_mismatch`, the rule by which a finished run
    is reused), :obj:`run`'s own seed included, sorted by name; ``[]`` without a readable
    config."""
    want = run_config(run)
    if want is None:
        return []
    same = {}
    for r in (x for rs in (everything or {}).values() for x in rs
              if not x.get("reused") and "mrr" in (x.get("test") or {})):
        cfg = run_config(r)
        if cfg is not None and set(want.result_mismatch(cfg)) <= {"seed"}:
            same[r["name"]] = r
    return [same[n] for n in sorted(same)]


def seed_spread(run: Dict[str, Any], everything: Optional[AllResults]
                ) -> Optional[Tuple[float, float, List[str]]]:
    r"""Mean and standard deviation of the test MRR over :func:`seed_group` of :obj:`run`,
    and their names; ``None`` below two seeds. It tells how large a difference from
    :obj:`run` has to be before it is more than seed noise."""
    group = seed_group(run, everything)
    if len(group) < 2:
        return None
    xs = [r["test"]["mrr"] for r in group]
    return statistics.mean(xs), statistics.stdev(xs), [r["name"] for r in group]


def exid_share(r: Dict[str, Any]) -> Optional[float]:
    r"""``λ · mi_upper / loss`` at the best epoch of :obj:`r`'s training curve, or ``None``
    (no curve kept, ExID off, a model without ExID such as TuckER or MoMoK with fewer than
    two experts, or no best epoch of its own: an ensemble)."""
    from momok_pyg.training import TrainConfig
    cfg, best = r.get("config") or {}, r.get("best_epoch")
    if not cfg.get("exid", TrainConfig.exid) or not isinstance(best, int):
        return None
    if (cfg.get("model", TrainConfig.model) != "momok"
            or cfg.get("num_experts", TrainConfig.num_experts) < 2):
        return None
    entry = next((e for e in r.get("train_curve") or [] if e.get("epoch") == best), None)
    if entry is None or not entry.get("loss"):
        return None
    lam = cfg.get("lambda_club", TrainConfig.lambda_club)
    return lam * entry["mi_upper"] / entry["loss"]
