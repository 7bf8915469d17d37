r"""The experiments as run specifications: what each experiment trains (configurations, names,
grids, seeds) and :func:`plan`, the runs that can be known from the finished results. No
process is started here (:mod:`momok_pyg.reproduce.runner` runs them)."""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from momok_pyg.machine import cpu_model, recorded_cpu_model
from momok_pyg.training.config import SYNTHETIC, TrainConfig, canonical_dataset

BENCHMARKS = ("DB15K", "MKG-W", "MKG-Y", "KVC16K")
#: upstream folder of each benchmark under ``datasets/`` (and under ``--raw-root``)
FOLDERS = {"DB15K": "DB15K", "MKG-W": "MKG-W", "MKG-Y": "MKG-Y", "KVC16K": "Kuai16K"}
OFFICIAL_FILES = ("img_features.pth", "text_features.pth")
RESULT_VERSION = 1

#: The structure-only TuckER of Table 1: the original TuckER's dropouts (input 0.3, hidden
#: 0.4, output 0.5), label smoothing 0.1 and exponential learning-rate decay (0.995 per epoch),
#: with the paper's batch of 1024 and d = 200. Loss and ``lr`` are chosen on valid
#: (:data:`TUCKER_GRID`).
TUCKER_RECIPE = dict(label_smoothing=0.1, lr_decay=0.995)
TUCKER = dict(model="tucker", dim=200, batch_size=1024, **TUCKER_RECIPE)
#: The grid tried for TuckER at the first seed: softmax CE (MoMoK's loss under the paper
#: protocol) at two learning rates.
TUCKER_GRID = (dict(loss="ce", lr=1e-3), dict(loss="ce", lr=3e-3))
#: The original TuckER's BCE against all entities, run once per dataset of
#: :data:`BCE_PROBE_DATASETS` for a fixed budget beside the grid (never selected): at batch
#: 1024 a BCE epoch is ~20 steps, and the loss first pushes every score down before any
#: answer ranks, so this run records how far BCE gets in the budget that CE needs.
TUCKER_BCE_PROBE = dict(loss="bce", lr=3e-3, epochs=60)
BCE_PROBE_DATASETS = ("MKG-Y", )
#: MoMoK of Table 1 at the TuckER budget: the paper's loss (softmax CE over all entities),
#: K = 3, lambda = 1e-4, batch 1024, dim 200, lr 1e-3
MOMOK = dict(model="momok", loss="ce", dim=200, lr=1e-3, batch_size=1024)
#: ablation rows (paper Table 2 / 8): name -> TrainConfig overrides of the full MoMoK
ABLATIONS = {
    "full": {},
    "no-rel-temperature": dict(rel_temperature=False),
    "no-noise": dict(noise=False),
    "mean-fusion": dict(fusion="mean"),
    "no-joint": dict(joint=False),
    "no-exid": dict(exid=False),
    #: beyond the paper: the full model trained with the Table 1 TuckER's recipe (label
    #: smoothing 0.1, lr decay 0.995 per epoch; MoMoK's row uses neither), to measure what
    #: the recipe gap between the two Table 1 rows is worth
    "tucker-recipe": dict(TUCKER_RECIPE),
    #: beyond the paper: the structure modality alone without experts, gate, ExID or joint
    #: modality, i.e. TuckER (:class:`~momok_pyg.nn.TuckER` is MoMoK with K = 0 and only the
    #: structure table), trained with MoMoK's recipe. Against ``no-joint``'s structure member
    #: (the same with K = 3 experts) it isolates the experts; against the Table 1 TuckER at
    #: MoMoK's lr it isolates the recipe
    "tucker-momok-recipe": dict(model="tucker", features=None),
}
#: the ablation rows that swap the recipes (:data:`TUCKER_RECIPE`) of Table 1's two rows
RECIPE_ROWS = ("tucker-recipe", "tucker-momok-recipe")
#: the official code's :math:`\lambda`: against its mean BCE over :math:`B \times N` it gives
#: ExID the weight that :math:`\lambda N` gives it against the paper's per-query CE (see
#: :data:`~momok_pyg.training.config.PROTOCOLS`); the ``exid-official-balance`` ablation row
#: trains the full model at that weight
OFFICIAL_LAMBDA = 1e-4
ROBUSTNESS_RATIOS = (0.2, 0.4, 0.6, 0.8)
ROBUSTNESS_TRANSFORMS = ("ModalityNoise", "ModalityMissing", "LinkSparsify")
#: the uni-modal baselines (PyG KGE models), trained like TuckER: 1-N softmax CE, d = 200,
#: batch 1024, Adam; the learning rate is chosen on valid from :data:`BASELINE_LRS`
BASELINE_MODELS = ("transe", "distmult", "complex", "rotate")
BASELINE = dict(loss="ce", dim=200, batch_size=1024)
BASELINE_LRS = (1e-3, 1e-2)
#: constructor arguments of a baseline beyond PyG's defaults: TransE with the L2 distance
#: (PyG's default L1 has no matrix-product form; its 1-N ``cdist`` backward was over ten
#: times slower than L2's in an ad-hoc CPU timing at a 1024 x 15k batch, d = 200)
BASELINE_KWARGS = {"transe": {"p_norm": 2.0}}
#: the structure encoder of the ``encoders`` experiment: two RGCNConv layers (inverse edges,
#: residual; :class:`~momok_pyg.nn.encoders.RGCNEncoder` defaults)
RGCN = {"name": "rgcn"}


@dataclass
class Options:
    r"""What ``momok-pyg reproduce`` was asked for (every experiment reads what it needs)."""
    raw_root: Optional[str] = None  #: folder holding ``DB15K/ MKG-W/ MKG-Y/ Kuai16K/``
    root: str = "datasets"  #: dataset cache root (processed files)
    runs_dir: str = "runs/reproduce"
    results_dir: str = "results"
    datasets: Optional[List[str]] = None  #: default: the experiment's own
    models: Sequence[str] = ("tucker", "momok")
    seeds: Sequence[int] = (0, 1, 2)
    grid: Optional[List[Dict[str, Any]]] = None  #: TuckER grid (default :data:`TUCKER_GRID`)
    max_epochs: int = 300
    eval_every: int = 5
    patience: int = 6  #: evaluations without a better valid MRR before stopping
    threads: Optional[int] = 1
    device: str = "auto"  #: every run's ``TrainConfig.device``
    #: run only the runs whose name matches one of these shell patterns (``fnmatch``)
    only: Optional[List[str]] = None
    features: Optional[str] = None  #: default: "official" if present, else "names"
    ratios: Sequence[float] = ROBUSTNESS_RATIOS
    cost_epochs: int = 2
    #: the CPU model a CPU cost run is planned for: ``"auto"`` reads this machine's
    #: (:func:`~momok_pyg.machine.cpu_model`); ``None`` does not tell CPU models
    #: apart (the report's status table, which must not depend on the machine writing it)
    cpu_model: Optional[str] = "auto"
    extra: Dict[str, Any] = field(default_factory=dict)  #: TrainConfig overrides for all runs


@dataclass
class RunSpec:
    r"""One run of an experiment."""
    experiment: str
    name: str
    config: TrainConfig
    meta: Dict[str, Any]
    #: ``"train"`` (a training run), ``"gates"`` / ``"evaluation"`` (an analysis of a trained
    #: run) or ``"reuse"`` (a finished run of ``meta["source_experiment"]`` with the same
    #: config)
    kind: str = "train"
    #: for the other kinds: the name of the training run analysed / reused
    #: (of ``meta["source_experiment"]`` when given, else of the same experiment)
    source: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# helpers shared by the experiments
# ---------------------------------------------------------------------------------------------
def _raw_from(dataset: str, opts: Options) -> Optional[str]:
    if dataset == SYNTHETIC or opts.raw_root is None:
        return None
    return str(Path(opts.raw_root) / FOLDERS.get(dataset, dataset))


def official_available(dataset: str, opts: Options) -> bool:
    r"""Whether the paper's image/text feature files of :obj:`dataset` are where
    ``features="official"`` looks for them (the raw folder given, or ``<root>/<folder>/raw``)."""
    folders = [Path(opts.root) / FOLDERS.get(dataset, dataset) / "raw"]
    raw = _raw_from(dataset, opts)
    if raw is not None:
        folders.append(Path(raw))
    return any(all((f / name).is_file() for name in OFFICIAL_FILES) for f in folders)


def features_for(dataset: str, opts: Options) -> Optional[str]:
    r"""The feature setting of MoMoK runs: the option if given, ``"official"`` when its files
    are present (the paper's setup, unchanged), else ``"names"`` (offline text from names;
    MKG-W's names are bare Wikidata ids, so MoMoK there has the structure modality only)."""
    if dataset == SYNTHETIC:
        return None
    if opts.features is not None:
        return opts.features
    return "official" if official_available(dataset, opts) else "names"


def _config(dataset: str, opts: Options, **kw: Any) -> TrainConfig:
    base = dict(dataset=dataset, root=opts.root, raw_from=_raw_from(dataset, opts),
                epochs=opts.max_epochs, eval_every=opts.eval_every, patience=opts.patience,
                threads=opts.threads, device=opts.device, progress=False, track_test=True)
    base.update(kw)
    base.update(opts.extra)
    return TrainConfig(**base)


def _slug(x: Any) -> str:
    return str(x).replace("/", "-").replace(" ", "")


def _grid_name(point: Dict[str, Any]) -> str:
    return "-".join(f"{k}{_slug(v)}" for k, v in sorted(point.items()))


def _datasets(opts: Options, default: Iterable[str]) -> List[str]:
    return [canonical_dataset(d) for d in (opts.datasets or list(default))]


def selection_score(result: Dict[str, Any]) -> float:
    r"""The valid MRR a finished run was selected by (its ``best_valid``)."""
    bv = result["best_valid"]
    if result["config"].get("select_on") == "valid_not_in_train":
        return float(bv["not_in_train"]["mrr"])
    return float(bv["mrr"])


# ---------------------------------------------------------------------------------------------
# the experiments
# ---------------------------------------------------------------------------------------------
def selected_grid_run(names: Sequence[str], done: Dict[str, Dict[str, Any]]) -> Optional[str]:
    r"""The name of the grid run with the best valid selection score, or :obj:`None` while
    any of :obj:`names` is unfinished (a selection among a partial grid could change)."""
    if not names or not all(n in done for n in names):
        return None
    return max(names, key=lambda n: selection_score(done[n]))


def _momok_name(ds: str, feats: Optional[str], seed: int) -> str:
    r"""The name of Table 1's MoMoK run of a dataset, its features and a seed."""
    return f"momok-{ds}-{feats or 'synthetic'}-seed{seed}"


def _tucker_grid_names(ds: str, opts: Options, seed: int) -> List[str]:
    grid = opts.grid or [dict(p) for p in TUCKER_GRID]
    return [f"tucker-{ds}-{_grid_name(point)}-seed{seed}" for point in grid]


def table1(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""TuckER: grid at seed 0, then the valid-best grid point at the other seeds; MoMoK at
    the TuckER budget for every seed. The seed runs of a dataset appear once its grid is
    done (run the command again)."""
    specs: List[RunSpec] = []
    grid = opts.grid or [dict(p) for p in TUCKER_GRID]
    seeds = list(opts.seeds)
    for ds in _datasets(opts, BENCHMARKS):
        if "tucker" in opts.models:
            grid_names = []
            for point in grid:
                name = f"tucker-{ds}-{_grid_name(point)}-seed{seeds[0]}"
                grid_names.append(name)
                specs.append(RunSpec("table1", name, _config(ds, opts, **{
                    **TUCKER, **point, "seed": seeds[0]}), dict(
                        dataset=ds, model="tucker", stage="grid", grid=point, seed=seeds[0])))
            if ds in BCE_PROBE_DATASETS:
                probe = dict(TUCKER_BCE_PROBE)
                specs.append(RunSpec("table1", f"tucker-{ds}-{_grid_name(probe)}-seed{seeds[0]}",
                                     _config(ds, opts, **{**TUCKER, **probe, "seed": seeds[0]}),
                                     dict(dataset=ds, model="tucker", stage="probe",
                                          grid=probe, seed=seeds[0])))
            best = selected_grid_run(grid_names, done)
            if best is not None:
                point = dict(done[best]["meta"]["grid"])
                done[best]["meta"]["selected"] = True
                for seed in seeds[1:]:
                    name = f"tucker-{ds}-{_grid_name(point)}-seed{seed}"
                    specs.append(RunSpec("table1", name, _config(ds, opts, **{
                        **TUCKER, **point, "seed": seed}), dict(
                            dataset=ds, model="tucker", stage="seed", grid=point, seed=seed)))
        if "momok" in opts.models:
            feats = features_for(ds, opts)
            for seed in seeds:
                name = _momok_name(ds, feats, seed)
                specs.append(RunSpec("table1", name, _config(ds, opts, **{
                    **MOMOK, "features": feats, "seed": seed}), dict(
                        dataset=ds, model="momok", features=feats, seed=seed, stage="seed")))
    return specs


def _mkgy(opts: Options) -> List[str]:
    return _datasets(opts, ["MKG-Y"])


def _trained(config: TrainConfig, result: Optional[Dict[str, Any]]) -> bool:
    r"""Whether the finished run :obj:`result` trained :obj:`config` (the same settings,
    budget included; see :meth:`TrainConfig.result_mismatch`)."""
    return (result is not None and "config" in result
            and not config.result_mismatch(TrainConfig.from_dict(result["config"])))


def _or_reuse(spec: RunSpec, table1_done: Dict[str, Dict[str, Any]], source: str) -> RunSpec:
    r""":obj:`spec`, or, when the finished Table 1 run :obj:`source` trained the same
    configuration, a ``"reuse"`` spec: its result is that run's result under this
    experiment's name (and says so), instead of a second training of the same run."""
    if not _trained(spec.config, table1_done.get(source)):
        return spec
    return dataclasses.replace(spec, kind="reuse", source=source,
                               meta={**spec.meta, "source_experiment": "table1"})


def _official_balance(dataset: str) -> Optional[Dict[str, Any]]:
    r"""The switch of the ``exid-official-balance`` row: ``lambda_club`` =
    :data:`OFFICIAL_LAMBDA` :math:`\cdot N`; ``None`` for a dataset whose entity count
    :math:`N` is not known without loading it (a benchmark class states it)."""
    from momok_pyg.datasets.registry import DATASETS, canonical_name
    n = getattr(DATASETS.get(canonical_name(dataset)), "counts", {}).get("entities")
    return None if n is None else dict(lambda_club=OFFICIAL_LAMBDA * n)


def ablations(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""Full MoMoK and each ablation switch (one seed each); the single-modality rows come
    from the full run's per-modality scores. The full row is Table 1's MoMoK run of that seed
    once it is finished with the same configuration (not trained twice). On a benchmark, the
    row ``exid-official-balance`` trains the full model with ExID weighted as the official
    code weighs it (see :data:`OFFICIAL_LAMBDA`). Beyond the paper, ``tucker-recipe`` and
    ``tucker-momok-recipe`` swap the training recipes of Table 1's MoMoK and TuckER rows
    (see :data:`ABLATIONS`); they run at every seed, as Table 1's rows do, because they
    compare the two models under one recipe (the full row's other seeds are Table 1's)."""
    specs = []
    table1_done = load_results(opts.results_dir, "table1")
    for ds in _mkgy(opts):
        feats = features_for(ds, opts)
        rows = dict(ABLATIONS)
        balance = _official_balance(ds)
        if balance is not None:
            rows["exid-official-balance"] = balance
        for row, switch in rows.items():
            for seed in list(opts.seeds)[:None if row in RECIPE_ROWS else 1]:
                spec = RunSpec("ablations", f"{row}-{ds}-seed{seed}", _config(ds, opts, **{
                    **MOMOK, "features": feats, "seed": seed, **switch}), dict(
                        dataset=ds, row=row, switch=switch,
                        features=switch.get("features", feats), seed=seed))
                specs.append(_or_reuse(spec, table1_done,
                                       _momok_name(ds, feats, seed)))
    return specs


def _transform(name: str, ratio: float, seed: int) -> Dict[str, Any]:
    kw: Dict[str, Any] = {"name": name, "ratio": ratio, "seed": seed}
    if name == "ModalityNoise":
        kw["std"] = 1.0
    return kw


def robustness(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""MoMoK and TuckER at ratio 0 and under each transform at each ratio. TuckER has no
    feature modality, so under ModalityNoise / ModalityMissing its ratio-0 run is its curve.
    A clean run is the Table 1 run of the same configuration once that is finished."""
    specs = []
    seed = list(opts.seeds)[0]
    table1_done = load_results(opts.results_dir, "table1")
    point = (opts.grid or [dict(TUCKER_GRID[0])])[0]
    for ds in _mkgy(opts):
        feats = features_for(ds, opts)
        models = {"momok": {**MOMOK, "features": feats}, "tucker": {**TUCKER, **point}}
        # the Table 1 runs that a clean run may be
        table1_names = {"momok": _momok_name(ds, feats, seed),
                        "tucker": f"tucker-{ds}-{_grid_name(point)}-seed{seed}"}
        for model in opts.models:
            specs.append(_or_reuse(RunSpec(
                "robustness", f"{model}-{ds}-clean-seed{seed}",
                _config(ds, opts, **models[model], seed=seed),
                dict(dataset=ds, model=model, transform=None, ratio=0.0)),
                table1_done, table1_names[model]))
            for t in ROBUSTNESS_TRANSFORMS:
                if model == "tucker" and t != "LinkSparsify":
                    continue
                for ratio in opts.ratios:
                    tf = _transform(t, float(ratio), seed)
                    specs.append(RunSpec(
                        "robustness", f"{model}-{ds}-{t}{ratio}-seed{seed}",
                        _config(ds, opts, **models[model], seed=seed, transforms=[tf]),
                        dict(dataset=ds, model=model, transform=t, ratio=float(ratio))))
    return specs


def gates(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""The analysis of a trained full MoMoK's best checkpoint: the Table 1 run of the same
    configuration when it is finished (no second training), else a run of its own."""
    specs = []
    seed = list(opts.seeds)[0]
    table1_done = load_results(opts.results_dir, "table1")
    for ds in _mkgy(opts):
        feats = features_for(ds, opts)
        cfg = _config(ds, opts, **{**MOMOK, "features": feats, "seed": seed})
        t1 = table1_done.get(_momok_name(ds, feats, seed))
        meta = dict(dataset=ds, features=feats)
        if _trained(cfg, t1):
            specs.append(RunSpec("gates", f"gates-{ds}-seed{seed}", cfg,
                                 {**meta, "source_experiment": "table1"}, kind="gates",
                                 source=t1["name"]))
            continue
        train_name = f"momok-{ds}-seed{seed}"
        specs.append(RunSpec("gates", train_name, cfg, meta))
        specs.append(RunSpec("gates", f"gates-{ds}-seed{seed}", cfg, meta, kind="gates",
                             source=train_name))
    return specs


def device_kind(device: str) -> str:
    r"""``"cpu"`` or ``"cuda"`` for a device string (``"auto"`` as
    :func:`~momok_pyg.training.device.resolve_device` resolves it; a CUDA device is named, not
    opened, so a CPU machine can plan a GPU's runs)."""
    import torch

    from momok_pyg.training.device import resolve_device
    return (resolve_device("auto") if device == "auto" else torch.device(device)).type


def _machine_slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cost(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""``cost_epochs`` epochs of each model on each benchmark (no early stop, one valid
    evaluation at the end), for seconds per epoch and peak RSS.

    Timings compare only on one machine: the same kind of device (CPU / CUDA) and, on a CPU,
    the same CPU model (``opts.cpu_model``; a GPU is not opened to plan, so GPUs are told
    apart by kind only). A pair is named ``<model>-<dataset>``; when that name is finished on
    another machine, the run here is ``<model>-<dataset>-<kind>``, and when that one is too,
    ``<model>-<dataset>-cpu-<CPU model>``. A name finished on this machine is done, and the
    earlier files stay."""
    kind = device_kind(opts.device)
    here = None
    if kind == "cpu":
        here = cpu_model() if opts.cpu_model == "auto" else opts.cpu_model

    def measured_here(name: str) -> bool:
        env = (done.get(name) or {}).get("env") or {}
        if device_kind(str(env.get("device", "cpu"))) != kind:
            return False
        return here is None or recorded_cpu_model(env) == here

    specs = []
    for ds in _datasets(opts, BENCHMARKS):
        for model in opts.models:
            base = dict(TUCKER, **TUCKER_GRID[0]) if model == "tucker" else dict(
                MOMOK, features=features_for(ds, opts))
            cfg = _config(ds, opts, **base, seed=0)
            cfg = dataclasses.replace(cfg, epochs=opts.cost_epochs, eval_every=opts.cost_epochs,
                                      patience=0, track_test=False)
            names = [f"{model}-{ds}", f"{model}-{ds}-{kind}"]
            if here is not None:
                names.append(f"{model}-{ds}-{kind}-{_machine_slug(here)}")
            name = next((n for n in names if n in done and measured_here(n)), None) or next(
                (n for n in names if n not in done), names[-1])
            specs.append(RunSpec("cost", name, cfg, dict(
                dataset=ds, model=model, features=cfg.features)))
    return specs


def unseen(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""MoMoK with fine-tuned (official default) vs fixed feature tables on MKG-Y, for the
    test triples that touch entities without training edges. The fine-tuned run is Table 1's
    MoMoK run of that seed once it is finished with the same configuration."""
    specs = []
    seed = list(opts.seeds)[0]
    table1_done = load_results(opts.results_dir, "table1")
    for ds in _mkgy(opts):
        feats = features_for(ds, opts)
        for finetune in (True, False):
            name = f"momok-{ds}-{'finetuned' if finetune else 'fixed'}-seed{seed}"
            # fine-tuning is MoMoK's default: that run is Table 1's MoMoK run
            spec = RunSpec("unseen", name, _config(ds, opts, **{
                **MOMOK, "features": feats, "seed": seed,
                "model_kwargs": {} if finetune else {"finetune_features": False}}), dict(
                    dataset=ds, finetune_features=finetune, features=feats))
            specs.append(_or_reuse(spec, table1_done,
                                   _momok_name(ds, feats, seed)))
    return specs


def baselines(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""Each PyG KGE model of :data:`BASELINE_MODELS` (or those of ``opts.models``) on each
    benchmark at every learning rate of :data:`BASELINE_LRS`, first seed only; the report
    shows the valid-selected one."""
    chosen = [m for m in opts.models if m in BASELINE_MODELS] or list(BASELINE_MODELS)
    seed = list(opts.seeds)[0]
    specs = []
    for ds in _datasets(opts, BENCHMARKS):
        for model in chosen:
            for lr in BASELINE_LRS:
                kwargs = dict(BASELINE_KWARGS.get(model, {}))
                specs.append(RunSpec("baselines", f"{model}-{ds}-lr{lr}-seed{seed}", _config(
                    ds, opts, **BASELINE, model=model, lr=lr, seed=seed, model_kwargs=kwargs),
                    dict(dataset=ds, model=model, stage="grid", grid={"lr": lr}, seed=seed,
                         model_kwargs=kwargs)))
    return specs


def encoders(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""The Table 1 TuckER (at the grid point selected on valid, once the Table 1 grid of the
    dataset is finished) and the Table 1 MoMoK with :data:`RGCN` as the structure encoder,
    first seed only; ``meta["compare_to"]`` names the Table 1 run that differs only in it."""
    specs = []
    seed = list(opts.seeds)[0]
    table1_done = load_results(opts.results_dir, "table1")
    for ds in _mkgy(opts):
        if "tucker" in opts.models:
            best = selected_grid_run(_tucker_grid_names(ds, opts, seed), table1_done)
            if best is not None:
                point = dict(table1_done[best]["meta"]["grid"])
                specs.append(RunSpec(
                    "encoders", f"tucker-rgcn-{ds}-{_grid_name(point)}-seed{seed}",
                    _config(ds, opts, **{**TUCKER, **point, "seed": seed,
                                         "structure_encoder": dict(RGCN)}),
                    dict(dataset=ds, model="tucker", encoder=dict(RGCN), grid=point, seed=seed,
                         compare_to=best)))
        if "momok" in opts.models:
            feats = features_for(ds, opts)
            specs.append(RunSpec(
                "encoders", f"momok-rgcn-{ds}-{feats or 'synthetic'}-seed{seed}",
                _config(ds, opts, **{**MOMOK, "features": feats, "seed": seed,
                                     "structure_encoder": dict(RGCN)}),
                dict(dataset=ds, model="momok", encoder=dict(RGCN), features=feats, seed=seed,
                     compare_to=_momok_name(ds, feats, seed))))
    return specs


def evaluation(opts: Options, done: Dict[str, Dict[str, Any]]) -> List[RunSpec]:
    r"""The runs of Table 1's TuckER rows (the selected grid point, every seed) evaluated
    under other evaluation protocols (:func:`~momok_pyg.training.evaluation_report`:
    filters from all splits to raw, every tie mode, each direction), to test whether the
    evaluation explains a row's distance to the paper. Each is planned once its Table 1 run
    is finished and evaluates that run's best checkpoint (``runs/reproduce/table1/<name>/``);
    where the checkpoint is gone (another machine), the run's configuration is trained again
    in the evaluation run's own directory, and the result says which checkpoint it read."""
    table1_done = load_results(opts.results_dir, "table1")
    specs = []
    for spec in table1(dataclasses.replace(opts, models=["tucker"]), table1_done):
        result = table1_done.get(spec.name)
        if result is None or spec.meta.get("stage") == "probe":
            continue
        if spec.meta.get("stage") == "grid" and not result["meta"].get("selected"):
            continue
        specs.append(RunSpec("evaluation", f"eval-{spec.name}", spec.config,
                             {**spec.meta, "source_experiment": "table1"}, kind="evaluation",
                             source=spec.name))
    return specs


EXPERIMENTS: Dict[str, Callable[[Options, Dict[str, Dict[str, Any]]], List[RunSpec]]] = {
    "table1": table1, "ablations": ablations, "robustness": robustness, "gates": gates,
    "cost": cost, "unseen": unseen, "baselines": baselines, "encoders": encoders,
    "evaluation": evaluation,
}


# ---------------------------------------------------------------------------------------------
# finished runs and the plan
# ---------------------------------------------------------------------------------------------
def load_results(results_dir: str, experiment: str) -> Dict[str, Dict[str, Any]]:
    r"""``{name: result}`` of the finished runs of :obj:`experiment`."""
    out = {}
    folder = Path(results_dir) / experiment
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid result JSON ({e}); delete it to rerun "
                             f"that run") from e
    return out


def plan(experiment: str, opts: Options) -> List[RunSpec]:
    r"""The runs of :obj:`experiment` that can be known now (dependent runs, e.g. the TuckER
    seeds of a dataset whose grid is unfinished, appear later)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of "
                         f"{sorted(EXPERIMENTS)}")
    specs = EXPERIMENTS[experiment](opts, load_results(opts.results_dir, experiment))
    if opts.only:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in opts.only)]
    return specs


def parse_grid(items: Sequence[str]) -> List[Dict[str, Any]]:
    r"""``["lr=0.001,0.003", "dim=200"]`` -> the product
    ``[{"dim": 200, "lr": 0.001}, {"dim": 200, "lr": 0.003}]``."""
    keys, values = [], []
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not key or not vals:
            raise ValueError(f"--grid: expected KEY=V1,V2,..., got {item!r}")
        keys.append(key)
        values.append([json.loads(v) if _is_json(v) else v for v in vals.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _is_json(v: str) -> bool:
    try:
        json.loads(v)
        return True
    except json.JSONDecodeError:
        return False
