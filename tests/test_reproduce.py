"""``momok-pyg reproduce``: run plans (grid -> seeds on valid), result JSON, resumption and
locks, on the synthetic MMKG; the new TrainConfig switches (lr decay, selection on the valid
triples not in train, test tracking, transforms)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from momok_pyg import reproduce as R
from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.reproduce.runner import _alive, _Lock
from momok_pyg.training import TrainConfig, load_checkpoint, train
from momok_pyg.training import loop as loop_mod

TINY = dict(num_entities=300, num_triples=3000, num_groups=6, num_attributes=4)


def _quiet(_):
    pass


def _opts(tmp_path, **kw):
    base = dict(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                datasets=["synthetic"], models=["tucker"], seeds=[0, 1],
                grid=[{"lr": 0.02}, {"lr": 0.005}], max_epochs=2, eval_every=1, patience=0,
                extra={"synthetic": TINY, "dim": 16})
    base.update(kw)
    return R.Options(**base)


def _fake_result(opts, name, valid_mrr, **meta):
    path = os.path.join(opts.results_dir, "table1", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"experiment": "table1", "name": name, "meta": meta,
                   "config": {"select_on": "valid"}, "best_valid": {"mrr": valid_mrr},
                   "test": {"mrr": 0.0}}, f)


def test_parse_grid_is_the_product_and_rejects_bad_items():
    assert R.parse_grid(["lr=0.001,0.003", "loss=ce"]) == [
        {"lr": 0.001, "loss": "ce"}, {"lr": 0.003, "loss": "ce"}]
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        R.parse_grid(["lr"])


def test_table1_plan_selects_the_seed_runs_on_valid(tmp_path):
    opts = _opts(tmp_path, seeds=[0, 1, 2])
    names = [s.name for s in R.plan("table1", opts)]
    assert names == ["tucker-synthetic-lr0.02-seed0", "tucker-synthetic-lr0.005-seed0"]
    _fake_result(opts, names[0], 0.30, dataset="synthetic", model="tucker", stage="grid",
                 grid={"lr": 0.02})
    assert [s.name for s in R.plan("table1", opts)] == names  # grid unfinished: no seeds
    _fake_result(opts, names[1], 0.35, dataset="synthetic", model="tucker", stage="grid",
                 grid={"lr": 0.005})
    specs = R.plan("table1", opts)
    seeds = [s for s in specs if s.meta["stage"] == "seed"]
    # the valid-best grid point (0.35 > 0.30), whatever its test metrics
    assert [s.name for s in seeds] == ["tucker-synthetic-lr0.005-seed1",
                                       "tucker-synthetic-lr0.005-seed2"]
    assert all(s.config.lr == 0.005 and s.config.model == "tucker" for s in seeds)
    assert [s.config.seed for s in seeds] == [1, 2]


def test_features_default_to_official_when_its_files_are_present(tmp_path):
    opts = R.Options(raw_root=str(tmp_path), root=str(tmp_path / "cache"))
    assert R.features_for("MKG-Y", opts) == "names"
    (tmp_path / "MKG-Y").mkdir()
    for f in R.OFFICIAL_FILES:
        (tmp_path / "MKG-Y" / f).write_bytes(b"")
    assert R.features_for("MKG-Y", opts) == "official"
    assert R.features_for("KVC16K", opts) == "names"  # its folder is Kuai16K
    table1 = R.EXPERIMENTS["table1"]
    spec = next(s for s in table1(R.Options(raw_root=str(tmp_path), models=["momok"],
                                            datasets=["MKG-Y"]), {}))
    assert spec.config.features == "official"
    assert spec.config.raw_from == str(tmp_path / "MKG-Y")


def test_run_experiment_end_to_end_and_resumes(tmp_path):
    opts = _opts(tmp_path)
    assert R.run_experiment("table1", opts, command="cmd", log=_quiet) == 3
    res = R.load_results(opts.results_dir, "table1")
    assert sorted(res) == ["tucker-synthetic-lr0.005-seed0", "tucker-synthetic-lr0.02-seed0",
                           sorted(n for n in res if n.endswith("seed1"))[0]]
    grid = [res[n] for n in res if n.endswith("seed0")]
    best = max(grid, key=R.selection_score)
    seed1 = next(r for n, r in res.items() if n.endswith("seed1"))
    assert seed1["meta"]["grid"] == best["meta"]["grid"] and seed1["config"]["seed"] == 1
    for r in res.values():
        assert r["command"] == "cmd" and r["epochs_run"] == 2 and r["max_epochs"] == 2
        assert r["commit"] == r["env"]["git_commit"] and r["env"]["cpu_count"] == os.cpu_count()
        assert [c["epoch"] for c in r["valid_curve"]] == [1, 2]
        assert [c["epoch"] for c in r["test_curve"]] == [1, 2]
        assert r["peak_rss_mb"] > 50 and r["wall_seconds"] > 0
        # the upstream-style report is each metric's max over the test curve ...
        for k in ("mrr", "hits@1", "hits@10"):
            assert r["upstream_style"][k] == max(c[k] for c in r["test_curve"])
        # ... while the reported test metrics are those of the best-valid epoch
        best_epoch = max(r["valid_curve"], key=lambda c: c["mrr"])["epoch"]
        assert r["best_epoch"] == best_epoch
        assert r["test"]["mrr"] == pytest.approx(
            next(c["mrr"] for c in r["test_curve"] if c["epoch"] == best_epoch))
        assert r["valid_still_rising"] == (best_epoch == 2)
    # everything finished: a second call trains nothing
    assert R.run_experiment("table1", opts, log=_quiet) == 0
    assert all(row["state"] == "done" for row in R.status("table1", opts))


def test_locks_skip_claimed_runs_and_take_over_stale_ones(tmp_path):
    lock = _Lock(tmp_path / "run")
    assert lock.acquire()
    assert not _Lock(tmp_path / "run").acquire()  # held by a live process (us)
    lock.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run" / _Lock.NAME).write_text(str(dead.pid))
    assert _Lock(tmp_path / "run").acquire()  # the holder is gone
    # a runner gone but its training child alive: still held
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run" / _Lock.NAME).write_text(f"{dead.pid}\n{child.pid}\n")
        assert not _Lock(tmp_path / "run").acquire()
    finally:
        child.kill()
        child.wait()
    assert _Lock(tmp_path / "run").acquire()


def _wait_for(cond, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_runner_leaves_no_trainer_behind(tmp_path, sig):
    # a runner on a run far too long to finish; its lock names it and then its trainer
    cmd = [sys.executable, "-m", "momok_pyg.cli", "reproduce", "table1",
           "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
           "--datasets", "synthetic", "--models", "tucker", "--seeds", "0",
           "--grid", "lr=0.01", "--max-epochs", "100000", "--eval-every", "1000",
           "--threads", "1", "--set", "synthetic=" + json.dumps(TINY), "dim=16"]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "table1" / "tucker-synthetic-lr0.01-seed0"
    lock = _Lock(run_dir)
    try:
        assert _wait_for(lambda: len(lock.pids()) == 2 or runner.poll() is not None)
        assert runner.poll() is None, "the runner exited before its trainer started"
        trainer = lock.pids()[1]
        assert lock.pids()[0] == runner.pid and _alive(trainer)
        assert not _Lock(run_dir).acquire()  # a second runner keeps off
        runner.send_signal(sig)
        runner.wait(60)
        assert _wait_for(lambda: not _alive(trainer), 60), "the trainer outlived its runner"
        # SIGTERM unwinds (lock released); after SIGKILL the lock is stale and taken over
        assert lock.path.exists() == (sig == signal.SIGKILL) and not lock.held()
        assert _Lock(run_dir).acquire()
    finally:
        runner.kill()
        runner.wait()
        for pid in lock.pids():
            if pid != os.getpid() and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_status_reports_how_far_an_unfinished_run_is(tmp_path):
    opts = _opts(tmp_path, seeds=[0], grid=[{"lr": 0.02}], max_epochs=4)
    spec = R.plan("table1", opts)[0]
    run_dir = tmp_path / "runs" / "table1" / spec.name
    assert R.status("table1", opts)[0] == {"name": spec.name, "state": "pending"}
    # an interrupted run: the loop stops after epoch 3 of 4 (as if killed there)
    m = train(dataclasses.replace(spec.config, epochs=3), run_dir, log=_quiet)
    (run_dir / "progress.json").write_text(json.dumps({
        **json.loads((run_dir / "progress.json").read_text()), "epochs": 4}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / _Lock.NAME).write_text(str(dead.pid))  # a stale lock: not "running"
    row = R.status("table1", opts)[0]
    assert row["state"] == "partial"
    prog = row["progress"]
    state = load_checkpoint(run_dir / "last.pt")["state"]
    assert prog["epoch"] == state["epoch"] == 3 and prog["best_epoch"] == m["best_epoch"]
    assert prog["best_valid_mrr"] == pytest.approx(m["best_valid"]["mrr"])
    assert prog["commits"] == state["commits"] and prog["elapsed_seconds"] > 0
    assert R.describe(row) == (f"partial  {spec.name}  epoch 3/4, best valid mrr "
                               f"{m['best_valid']['mrr']:.4f} at {m['best_epoch']}")
    assert _Lock(run_dir).acquire()  # held by this process now
    assert R.status("table1", opts)[0]["state"] == "running"


def test_a_claimed_run_is_left_to_its_holder(tmp_path):
    opts = _opts(tmp_path, seeds=[0], grid=[{"lr": 0.02}])
    name = R.plan("table1", opts)[0].name
    assert _Lock(tmp_path / "runs" / "table1" / name).acquire()
    assert R.run_experiment("table1", opts, log=_quiet) == 0
    assert R.status("table1", opts)[0]["state"] == "running"


def test_lr_decay_select_on_and_track_test(tmp_path, monkeypatch):
    data = make_synthetic_mmkg(**TINY)
    # put 40 valid triples into train: "not in train" is then a strict subset
    from momok_pyg.datasets.schema import get_triples, set_triples
    train_t, valid_t = get_triples(data, "train"), get_triples(data, "valid")
    set_triples(data, "train", torch.cat([train_t, valid_t[:40]]))
    from momok_pyg.evaluate import in_train_mask
    mask = in_train_mask(data, "valid")
    assert mask[:40].all() and int(mask.sum()) == 40
    cfg = TrainConfig.for_dataset("synthetic", synthetic=TINY, dim=16, lr=0.01, epochs=3,
                                  eval_every=1, patience=0, threads=1, progress=False,
                                  model="tucker", lr_decay=0.5, select_on="valid_not_in_train",
                                  track_test=True)
    m = train(cfg, tmp_path, data=data, log=_quiet)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 ** 3)
    curve = m["valid_curve"]
    assert all(c["not_in_train"]["count"] == 2 * (valid_t.size(0) - 40) for c in curve)
    best = max(curve, key=lambda c: c["not_in_train"]["mrr"])
    assert m["best_epoch"] == best["epoch"] and m["select_on"] == "valid_not_in_train"
    assert [c["epoch"] for c in m["test_curve"]] == [1, 2, 3]
    # the not-in-train subset equals ranking those triples alone
    from momok_pyg.evaluate import evaluate_link_prediction
    from momok_pyg.training import load_model, scorer
    model = load_model(tmp_path, data=data)[0]
    full = evaluate_link_prediction(scorer(model), data, "valid", breakdowns=False,
                                    subsets={"not_in_train": ~mask})
    alone = data.clone()
    set_triples(alone, "valid", valid_t[40:])
    from momok_pyg.metrics import FilterIndex
    sub = evaluate_link_prediction(scorer(model), alone, "valid", breakdowns=False,
                                   filter_index=FilterIndex.from_data(data))
    assert full["not_in_train"]["mrr"] == pytest.approx(sub["mrr"])
    assert full["not_in_train"]["count"] == sub["count"]
    with pytest.raises(ValueError, match="bool mask of shape"):
        evaluate_link_prediction(scorer(model), data, "valid", subsets={"x": mask[:3]})


def test_config_validates_the_new_switches():
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=0.0)
    with pytest.raises(ValueError, match="select_on"):
        TrainConfig(select_on="test")
    with pytest.raises(ValueError, match="transforms"):
        TrainConfig(transforms=[{"name": "Shuffle"}])


def test_transforms_in_the_config_reach_the_training_data():
    cfg = TrainConfig.for_dataset("synthetic", synthetic=TINY,
                                  transforms=[{"name": "LinkSparsify", "ratio": 0.5}])
    from momok_pyg.datasets.schema import get_triples
    full = loop_mod.load_data(TrainConfig.for_dataset("synthetic", synthetic=TINY))
    sparse = loop_mod.load_data(cfg)
    n_full, n_sparse = get_triples(full, "train").size(0), get_triples(sparse, "train").size(0)
    assert n_sparse == pytest.approx(n_full * 0.5, abs=1)
    assert torch.equal(get_triples(full, "test"), get_triples(sparse, "test"))


def test_cli_train_from_a_config_file(tmp_path, capsys):
    from momok_pyg.cli import main
    cfg = TrainConfig.for_dataset("synthetic", synthetic=TINY, dim=16, epochs=1, threads=1,
                                  model="tucker", progress=False)
    cfg.save(tmp_path / "c.json")
    assert main(["train", "--config", str(tmp_path / "c.json"), "--lr", "0.02",
                 "--out", str(tmp_path / "run")]) == 0
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert saved.lr == 0.02 and saved.dim == 16 and saved.model == "tucker"
    assert saved.synthetic == TINY


def test_protocols_expand_below_explicit_flags():
    from momok_pyg.cli import build_parser, config_from_args
    paper = TrainConfig.for_dataset("MKG-Y")
    assert (paper.protocol, paper.loss, paper.aggregate, paper.model_kwargs) == \
        ("paper", "ce", "sum", {})
    off = config_from_args(build_parser().parse_args(
        ["train", "--dataset", "MKG-Y", "--protocol", "official", "--model-arg",
         "exid_sample=false"]))
    assert (off.protocol, off.loss, off.label_smoothing, off.aggregate, off.rel_dim) == \
        ("official", "bce", 0.1, "mean_sigmoid", 256)
    assert off.model_kwargs == {"gate_input": "raw", "exid_pairs": "random",
                                "exid_shared": True, "exid_sample": False}
    assert config_from_args(build_parser().parse_args(
        ["train", "--protocol", "official", "--loss", "ce"])).loss == "ce"
    data = make_synthetic_mmkg(**TINY)
    model = loop_mod.build_model(TrainConfig.for_dataset(
        "synthetic", synthetic=TINY, dim=8, protocol="official"), data)
    assert model.exid.pairs == "random" and model.exid.shared and model.rel_dim == 256
    assert model.mujod.aggregate_type == "mean_sigmoid"
    with pytest.raises(ValueError, match="protocol"):
        TrainConfig(protocol="upstream")


def test_the_bce_probe_is_planned_but_never_selected(tmp_path):
    opts = _opts(tmp_path, datasets=["MKG-Y"], grid=None, seeds=[0, 1])
    specs = R.plan("table1", opts)
    probe = [s for s in specs if s.meta["stage"] == "probe"]
    assert len(probe) == 1 and probe[0].config.loss == "bce" and probe[0].config.epochs == 60
    for s in specs:
        mrr = 0.9 if s.meta["stage"] == "probe" else (0.3 if s.config.lr == 1e-3 else 0.2)
        _fake_result(opts, s.name, mrr, **s.meta)
    seeds = [s for s in R.plan("table1", opts) if s.meta["stage"] == "seed"]
    assert [(s.config.loss, s.config.lr, s.config.seed) for s in seeds] == [("ce", 1e-3, 1)]


def test_only_patterns_and_device_reach_the_plan(tmp_path):
    opts = _opts(tmp_path, seeds=[0, 1, 2], only=["*lr0.005*"], device="cpu")
    specs = R.plan("table1", opts)
    assert [s.name for s in specs] == ["tucker-synthetic-lr0.005-seed0"]
    assert specs[0].config.device == "cpu"
    assert R.plan("table1", _opts(tmp_path, only=["nothing-*"])) == []
    with pytest.raises(ValueError, match="device must be"):
        R.plan("table1", _opts(tmp_path, device="gpu"))


def test_the_official_exid_balance_row_scales_lambda_by_the_entity_count(tmp_path):
    opts = R.Options(raw_root=str(tmp_path), root=str(tmp_path / "cache"),
                     results_dir=str(tmp_path / "results"))
    rows = {s.meta["row"]: s for s in R.plan("ablations", opts)}
    assert set(rows) == set(R.ABLATIONS) | {"exid-official-balance"}
    balance = rows["exid-official-balance"]
    assert balance.config.lambda_club == pytest.approx(1e-4 * 15000)  # MKG-Y: N = 15,000
    assert balance.meta["switch"] == {"lambda_club": balance.config.lambda_club}
    assert balance.config.exid and rows["full"].config.lambda_club == R.OFFICIAL_LAMBDA
    # a dataset whose size is known only once generated has no such row
    assert "exid-official-balance" not in {s.meta["row"] for s in
                                           R.plan("ablations", _opts(tmp_path))}


def test_the_recipe_rows_swap_only_the_recipe_between_momok_and_tucker(tmp_path):
    from dataclasses import asdict
    opts = R.Options(raw_root=str(tmp_path), root=str(tmp_path / "cache"),
                     results_dir=str(tmp_path / "results"))
    specs = R.plan("ablations", opts)
    rows = {s.meta["row"]: asdict(s.config) for s in specs if s.config.seed == 0}
    # the recipe rows run at every seed (a comparison of the two models), the others at one
    seeds = {}
    for s in specs:
        seeds.setdefault(s.meta["row"], []).append(s.config.seed)
    assert seeds["tucker-recipe"] == seeds["tucker-momok-recipe"] == list(opts.seeds) == [0, 1, 2]
    assert seeds["no-exid"] == seeds["full"] == [0]
    assert "tucker-recipe-MKG-Y-seed2" in {s.name for s in specs}
    tucker = next(asdict(s.config) for s in R.plan("table1", opts)
                  if s.name == "tucker-MKG-Y-lossce-lr0.001-seed0")  # MoMoK's lr

    def diff(a, b):
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    recipe = {"label_smoothing": (0.1, None), "lr_decay": (0.995, 1.0)}
    # MoMoK with TuckER's recipe: the full row but for the recipe
    assert diff(rows["tucker-recipe"], rows["full"]) == recipe
    # TuckER with MoMoK's recipe: the Table 1 TuckER but for the recipe
    assert diff(tucker, rows["tucker-momok-recipe"]) == recipe
    assert rows["tucker-momok-recipe"]["model"] == "tucker"
    meta = next(s.meta for s in R.plan("ablations", opts) if s.meta["row"] ==
                "tucker-momok-recipe")
    assert meta["features"] is None  # the row's own features, not the full row's


def test_baselines_plan_is_a_learning_rate_grid_per_kge_model(tmp_path):
    opts = _opts(tmp_path, models=["distmult", "tucker"])
    specs = R.plan("baselines", opts)
    assert [s.name for s in specs] == [f"distmult-synthetic-lr{lr}-seed0"
                                       for lr in R.BASELINE_LRS]
    assert all(s.config.model == "distmult" and s.config.dim == 16 for s in specs)  # extra
    everyone = R.plan("baselines", _opts(tmp_path, models=["tucker", "momok"]))
    assert sorted({s.config.model for s in everyone}) == sorted(R.BASELINE_MODELS)
    transe = [s for s in everyone if s.config.model == "transe"]
    assert all(s.config.model_kwargs == {"p_norm": 2.0} == s.meta["model_kwargs"]
               for s in transe) and len(transe) == len(R.BASELINE_LRS)


def test_gates_reuse_the_finished_table1_run_of_the_same_config(tmp_path):
    opts = _opts(tmp_path, models=["momok"], seeds=[0])
    assert [s.name for s in R.plan("gates", opts)] == ["momok-synthetic-seed0",
                                                       "gates-synthetic-seed0"]
    t1 = next(s for s in R.plan("table1", opts) if s.config.model == "momok")
    path = os.path.join(opts.results_dir, "table1", f"{t1.name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"experiment": "table1", "name": t1.name, "config": t1.config.to_dict(),
                   "meta": {}}, f)
    specs = R.plan("gates", opts)
    assert [(s.name, s.kind, s.source, s.meta["source_experiment"]) for s in specs] == [
        ("gates-synthetic-seed0", "gates", t1.name, "table1")]


def test_encoders_plan_follows_the_table1_selection(tmp_path):
    opts = _opts(tmp_path, models=["tucker", "momok"], seeds=[0])
    specs = R.plan("encoders", opts)
    # the TuckER row waits for the Table 1 grid; MoMoK's needs no selection
    assert [s.name for s in specs] == ["momok-rgcn-synthetic-synthetic-seed0"]
    assert specs[0].config.structure_encoder == {"name": "rgcn"}
    assert specs[0].meta["compare_to"] == "momok-synthetic-synthetic-seed0"
    t1 = [s for s in R.plan("table1", opts) if s.meta.get("stage") == "grid"]
    for s in t1:  # lr 0.005 wins on valid
        _fake_result(opts, s.name, 0.4 if s.config.lr == 0.005 else 0.3, **s.meta)
    tucker = [s for s in R.plan("encoders", opts) if s.config.model == "tucker"]
    assert [s.name for s in tucker] == ["tucker-rgcn-synthetic-lr0.005-seed0"]
    assert tucker[0].config.lr == 0.005 and tucker[0].config.structure_encoder == {"name": "rgcn"}
    assert tucker[0].meta["compare_to"] == "tucker-synthetic-lr0.005-seed0"


def _write_table1(opts, spec, **result):
    path = os.path.join(opts.results_dir, "table1", f"{spec.name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"experiment": "table1", "name": spec.name, "meta": spec.meta,
                   "config": spec.config.to_dict(), "command": "momok-pyg reproduce table1",
                   **result}, f)


def test_runs_equal_to_a_finished_table1_run_are_copied_not_trained(tmp_path):
    opts = _opts(tmp_path, models=["tucker", "momok"], seeds=[0], ratios=[0.5])
    before = {e: R.plan(e, opts) for e in ("ablations", "robustness", "unseen")}
    assert all(s.kind == "train" for specs in before.values() for s in specs)
    # the fine-tuned unseen run is MoMoK's default: no model_kwargs, like Table 1's run
    unseen = {s.meta["finetune_features"]: s for s in before["unseen"]}
    assert unseen[True].config.model_kwargs == {}
    assert unseen[False].config.model_kwargs == {"finetune_features": False}
    table1 = {s.name: s for s in R.plan("table1", opts)}
    momok = table1["momok-synthetic-synthetic-seed0"]
    tucker = table1["tucker-synthetic-lr0.02-seed0"]
    _write_table1(opts, momok, test={"mrr": 0.42}, commits=["c0ffee"])
    _write_table1(opts, tucker, test={"mrr": 0.37})
    reuse = {(e, s.name): s.source for e in before for s in R.plan(e, opts)
             if s.kind == "reuse"}
    assert reuse == {("ablations", "full-synthetic-seed0"): momok.name,
                     ("robustness", "momok-synthetic-clean-seed0"): momok.name,
                     ("robustness", "tucker-synthetic-clean-seed0"): tucker.name,
                     ("unseen", "momok-synthetic-finetuned-seed0"): momok.name}
    # another budget is another run: trained, not copied
    longer = _opts(tmp_path, models=["momok"], seeds=[0], max_epochs=3)
    assert all(s.kind == "train" for s in R.plan("ablations", longer))

    only = _opts(tmp_path, models=["tucker", "momok"], seeds=[0], ratios=[0.5],
                 only=["*-clean-*"])
    assert R.run_experiment("robustness", only, command="copy-cmd", log=_quiet) == 2
    res = R.load_results(opts.results_dir, "robustness")
    clean = res["momok-synthetic-clean-seed0"]
    assert clean["test"] == {"mrr": 0.42} and clean["commits"] == ["c0ffee"]
    assert clean["command"] == "momok-pyg reproduce table1"  # what trained it
    assert clean["reused"] == {"experiment": "table1", "name": momok.name,
                               "command": "copy-cmd"}
    assert clean["experiment"] == "robustness" and clean["meta"]["transform"] is None
    assert res["tucker-synthetic-clean-seed0"]["test"] == {"mrr": 0.37}
    assert not (tmp_path / "runs" / "robustness").exists()  # nothing trained, no run dir
    lines = [R.describe(r) for r in R.status("unseen", opts)]
    assert ("pending  momok-synthetic-finetuned-seed0  = table1/momok-synthetic-synthetic-seed0"
            in lines)


def test_the_recorded_command_reruns_in_a_shell(tmp_path, monkeypatch):
    from momok_pyg import cli
    seen = {}
    monkeypatch.setattr(R, "run_experiment",
                        lambda exp, opts, command, limit: seen.setdefault("cmd", command))
    assert cli.main(["reproduce", "table1", "--runs", "tucker-*", "a b",
                     "--results-dir", str(tmp_path)]) == 0
    assert seen["cmd"] == ("momok-pyg reproduce table1 --runs 'tucker-*' 'a b' --results-dir "
                           + str(tmp_path))


def test_every_call_that_resumed_a_run_is_recorded(tmp_path):
    from momok_pyg.reproduce.runner import INVOCATIONS, record_invocation
    opts = _opts(tmp_path, seeds=[0], grid=[{"lr": 0.02}], max_epochs=4)
    spec = R.plan("table1", opts)[0]
    run_dir = tmp_path / "runs" / "table1" / spec.name
    run_dir.mkdir(parents=True)
    # a list left from an earlier run in this folder is dropped by a fresh start ...
    (run_dir / INVOCATIONS).write_text(json.dumps([{"command": "stale", "after_epoch": 9}]))
    assert [i["command"] for i in record_invocation(run_dir, "first")] == ["first"]
    # ... which trains 3 of 4 epochs and is killed; a later call resumes and finishes it
    train(dataclasses.replace(spec.config, epochs=3), run_dir, log=_quiet)
    assert R.run_experiment("table1", opts, command="second", log=_quiet) == 1
    r = R.load_results(opts.results_dir, "table1")[spec.name]
    assert r["command"] == "second" and r["epochs_run"] == 4
    assert [(i["command"], i["after_epoch"]) for i in r["invocations"]] == [
        ("first", 0), ("second", 3)]
    assert [s["after_epoch"] for s in r["starts"]] == [0, 3]
    assert json.loads((run_dir / INVOCATIONS).read_text()) == r["invocations"]


def test_a_cost_pair_finished_on_another_machine_is_measured_again_under_its_own_name(
        tmp_path):
    opts = _opts(tmp_path, datasets=["MKG-Y"], models=["tucker", "momok"], device="cpu",
                 cpu_model="Intel Xeon", extra={})
    names = lambda o=opts: [s.name for s in R.plan("cost", o)]  # noqa: E731

    def finish(name, device, cpu_model):
        path = tmp_path / "results" / "cost" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"experiment": "cost", "name": name, "meta": {},
                                    "env": {"device": device, "cpu_model": cpu_model}}))

    assert names() == ["tucker-MKG-Y", "momok-MKG-Y"]
    finish("tucker-MKG-Y", "cpu", "Intel Xeon")
    finish("momok-MKG-Y", "cuda:0", "Intel Xeon")
    # TuckER's CPU run is done; MoMoK's finished on CUDA, so the CPU pair needs its own run
    assert names() == ["tucker-MKG-Y", "momok-MKG-Y-cpu"]
    assert names(dataclasses.replace(opts, device="cuda:1")) == [
        "tucker-MKG-Y-cuda", "momok-MKG-Y"]
    assert {r["name"]: r["state"] for r in R.status("cost", opts)} == {
        "tucker-MKG-Y": "done", "momok-MKG-Y-cpu": "pending"}
    # another CPU model measures both again, under the next free name
    epyc = dataclasses.replace(opts, cpu_model="AMD EPYC 7763")
    assert names(epyc) == ["tucker-MKG-Y-cpu", "momok-MKG-Y-cpu"]
    finish("tucker-MKG-Y-cpu", "cpu", "AMD EPYC 7763")
    finish("momok-MKG-Y-cpu", "cpu", "AMD EPYC 7763")
    assert names(epyc) == ["tucker-MKG-Y-cpu", "momok-MKG-Y-cpu"]  # both done there
    assert {r["state"] for r in R.status("cost", epyc)} == {"done"}
    # the Xeon's MoMoK pair is still to measure; a third CPU model gets its own names
    assert names() == ["tucker-MKG-Y", "momok-MKG-Y-cpu-intel-xeon"]
    assert names(dataclasses.replace(opts, cpu_model="Ampere Altra")) == [
        "tucker-MKG-Y-cpu-ampere-altra", "momok-MKG-Y-cpu-ampere-altra"]
    # without a CPU model (the report's status) any CPU run counts
    assert names(dataclasses.replace(opts, cpu_model=None)) == [
        "tucker-MKG-Y", "momok-MKG-Y-cpu"]


def test_evaluation_ranks_the_table1_checkpoints_under_other_protocols(tmp_path):
    import shutil
    opts = _opts(tmp_path, grid=[{"lr": 0.02}], seeds=[0])
    assert R.plan("evaluation", opts) == []  # nothing of Table 1 finished yet
    assert R.run_experiment("table1", opts, command="t1", log=_quiet) == 1
    (name, t1), = R.load_results(opts.results_dir, "table1").items()
    assert [(s.name, s.kind, s.source) for s in R.plan("evaluation", opts)] == [
        (f"eval-{name}", "evaluation", name)]
    own = os.path.join(opts.runs_dir, "table1", name)
    result = os.path.join(opts.results_dir, "evaluation", f"eval-{name}.json")
    for retrained in (False, True):
        if retrained:  # the checkpoint is gone (another machine): trained again
            shutil.rmtree(own)
            os.remove(result)
        assert R.run_experiment("evaluation", opts, command="ev", log=_quiet) == 1
        e = R.load_results(opts.results_dir, "evaluation")[f"eval-{name}"]
        assert e["kind"] == "evaluation" and e["command"] == "ev" and e["source"] == name
        assert e["env"]["threads"] == opts.threads == 1
        assert e["retrained"] == retrained == ("training" in e)
        rows = {(tuple(p["filter"]), p["tie"]): p for p in e["protocols"]}
        assert len(rows) == 4 * 3
        assert {p["count"] for p in rows.values()} == {t1["test"]["count"]}
        full = rows[(("train", "valid", "test"), "realistic")]
        # the standard protocol gives the test MRR the evaluated checkpoint's run reported
        if not retrained:
            assert e["checkpoint"] == os.path.join(own, "best.pt")
            assert full["mrr"] == pytest.approx(t1["test"]["mrr"])
        else:
            assert e["checkpoint"].startswith(os.path.join(opts.runs_dir, "evaluation"))
            assert os.path.exists(e["checkpoint"])
            assert full["mrr"] == pytest.approx(e["training"]["test"]["mrr"])
        for tie in ("realistic", "optimistic", "pessimistic"):
            # filtering fewer known answers can only push targets down
            mrrs = [rows[(f, tie)]["mrr"] for f in (("train", "valid", "test"),
                                                    ("train", "valid"), ("train",), ())]
            assert mrrs == sorted(mrrs, reverse=True) and mrrs[0] > mrrs[-1]
        for f in {k[0] for k in rows}:
            real = rows[(f, "realistic")]
            assert rows[(f, "optimistic")]["mrr"] >= real["mrr"] >= rows[(f, "pessimistic")]["mrr"]
            assert real["mrr"] == pytest.approx((real["head_mrr"] + real["tail_mrr"]) / 2)
    assert R.run_experiment("evaluation", opts, log=_quiet) == 0
