"""The reproduction report: tables and plots from result JSON files alone (small files
written here), and the marker-delimited update of RESULTS.md."""
import json
import statistics

import pytest

from momok_pyg import report
from momok_pyg.machine import recorded_cpu_model


def _curve(values, key="mrr"):
    return [{"epoch": 5 * (i + 1), key: v, "mr": 100.0 - i, "hits@1": v / 2, "hits@3": v,
             "hits@10": min(1.0, 2 * v)} for i, v in enumerate(values)]


def _result(exp, name, meta, test_mrr, valid_mrr=0.3, **kw):
    r = {"experiment": exp, "name": name, "meta": meta, "command": f"momok-pyg reproduce {exp}",
         "commit": "abc123", "config": {"select_on": "valid"},
         "env": {"cpu_model": "TestCPU", "cpu_count": 2, "threads": 1, "torch": "x"},
         "best_valid": {"mrr": valid_mrr}, "best_epoch": 10, "epochs_run": 20,
         "stopped_early": True, "valid_still_rising": False,
         "valid_curve": _curve([0.1, valid_mrr]), "test_curve": _curve([0.2, test_mrr + 0.01]),
         "upstream_style": {"mrr": test_mrr + 0.01},
         "test": {"mrr": test_mrr, "mr": 50.0, "hits@1": test_mrr / 2, "hits@3": test_mrr,
                  "hits@10": min(1.0, 2 * test_mrr),
                  "unseen_entity": {"mrr": 0.01, "hits@10": 0.02, "count": 776}},
         "per_modality": {}, "epoch_seconds_median": 12.5, "peak_rss_mb": 812.0,
         "num_parameters": 1000}
    r.update(kw)
    return r


def _write(root, r):
    path = root / r["experiment"] / f"{r['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    tm = dict(dataset="MKG-Y", model="tucker")
    _write(root, _result("table1", "g1", {**tm, "stage": "grid", "grid": {"lr": 0.001}},
                         0.360, valid_mrr=0.33))
    _write(root, _result("table1", "g2", {**tm, "stage": "grid", "grid": {"lr": 0.003}},
                         0.390, valid_mrr=0.31))  # better test, worse valid: not selected
    _write(root, _result("table1", "s1", {**tm, "stage": "seed", "grid": {"lr": 0.001}},
                         0.370))
    _write(root, _result("table1", "s2", {**tm, "stage": "seed", "grid": {"lr": 0.001}},
                         0.380))
    _write(root, _result("table1", "m0", dict(dataset="MKG-Y", model="momok",
                                              features="names", stage="seed"), 0.400,
                         per_modality={"structure": {"mrr": 0.31}, "joint": {"mrr": 0.35},
                                       "text": {"mrr": 0.33}}))
    # a dataset without a TuckER row and without the text modality
    _write(root, _result("table1", "m1", dict(dataset="MKG-W", model="momok",
                                              features="names", stage="seed"), 0.300,
                         per_modality={"structure": {"mrr": 0.28}, "joint": {"mrr": 0.29}}))
    full = _result("ablations", "full", {"row": "full"}, 0.40,
                   per_modality={"structure": {"mrr": 0.35, "hits@1": 0.3, "hits@3": 0.36,
                                               "hits@10": 0.4}})
    _write(root, full)
    _write(root, _result("ablations", "no-exid", {"row": "no-exid"}, 0.39))
    for model, base in (("momok", 0.4), ("tucker", 0.37)):
        _write(root, _result("robustness", f"{model}-clean", dict(model=model, transform=None,
                                                                  ratio=0.0), base))
        _write(root, _result("robustness", f"{model}-ls", dict(
            model=model, transform="LinkSparsify", ratio=0.4), base - 0.1))
    _write(root, _result("robustness", "momok-noise", dict(
        model="momok", transform="ModalityNoise", ratio=0.4), 0.38))
    _write(root, _result("cost", "tucker-MKG-Y", dict(dataset="MKG-Y", model="tucker"), 0.1))
    _write(root, _result("unseen", "ft", dict(dataset="MKG-Y", finetune_features=True), 0.3))
    _write(root, {"experiment": "gates", "name": "gates-MKG-Y", "kind": "gates",
                  "source": "momok-MKG-Y-seed0", "command": "momok-pyg reproduce gates",
                  "commit": "abc123", "env": {}, "meta": {},
                  "statistics": {"relations": ["a", "b", "a (inverse)", "b (inverse)"],
                                 "count": [3, 0, 3, 0],
                                 "gates": {"structure": [[0.5, 0.3, 0.2]] * 4},
                                 "fusion": [[0.6, 0.4]] * 4,
                                 "relation_fusion": [[0.7, 0.3]] * 4,
                                 "fusion_modalities": ["structure", "text"]},
                  "per_relation_mrr": {"structure": {"a": 0.5}, "joint": {"a": 0.6}},
                  "best_modality": {"a": "joint"}})
    (root / "old").mkdir()
    (root / "old" / "metrics.json").write_text(json.dumps({"dataset": "MKG-Y"}))  # not ours
    return root


def _row(text, *cells):
    return next(line for line in text.splitlines()
                if all(f"| {c} |" in line or line.startswith(f"| {c} |") for c in cells))


def test_table1_numbers_come_from_the_files(results, tmp_path):
    text = report.render(results, tmp_path / "fig")
    row = _row(text, "MKG-Y", "TuckER (structure)")
    mrrs = [0.360, 0.370, 0.380]  # the valid-selected grid point and its seeds
    expected = f"{100 * statistics.mean(mrrs):.2f} ± {100 * statistics.stdev(mrrs):.2f}"
    assert f"| {expected} |" in row and "| 3 |" in row
    assert f"| {100 * statistics.mean(mrrs) - 37.05:+.2f} |" in row  # vs the paper's 37.05
    assert "| 37.05 |" in row
    assert "| 40.00 |" in _row(text, "MKG-Y", "MoMoK (names)")
    selected = next(line for line in text.splitlines() if "**selected**" in line)
    assert "lr=0.001" in selected and "| 33.00 |" in selected
    assert "momok-pyg reproduce table1" in text and "TestCPU" in text
    assert "old" not in text.split("## Table 1")[0]
    assert (tmp_path / "fig" / "table1-MKG-Y.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table1_momok_rows_scored_by_one_modality(results, tmp_path):
    text = report.render(results, tmp_path / "fig")
    header = next(line for line in text.splitlines() if "| structure only |" in line)
    # every modality found in any run, the joint one last
    assert "| structure only | text only | joint only | summed (row above) |" in header
    row = next(line for line in text.splitlines()
               if line.startswith("| MKG-Y | MoMoK (names) | 1 | 31.00 |"))
    tucker = statistics.mean([0.360, 0.370, 0.380])  # the selected grid point and its seeds
    assert f"| 33.00 | 35.00 | 40.00 | {100 * tucker:.2f} ± 1.00 |" in row
    assert row.endswith(f"| {100 * (0.400 - tucker):+.2f} |")
    # no text modality and no TuckER run on MKG-W: dashes, not zeros
    row = next(line for line in text.splitlines()
               if line.startswith("| MKG-W | MoMoK (names) | 1 | 28.00 |"))
    assert row.endswith("| 28.00 | — | 29.00 | 30.00 | — | — |")


def test_selection_on_the_valid_triples_not_in_train_reads_the_test_curve():
    r = {"valid_curve": [{"epoch": 5, "mrr": 0.5, "not_in_train": {"mrr": 0.1}},
                         {"epoch": 10, "mrr": 0.4, "not_in_train": {"mrr": 0.2}}],
         "test_curve": [{"epoch": 5, "mrr": 0.33}, {"epoch": 10, "mrr": 0.31}]}
    assert report.alt_selection_test(r) == 0.31
    assert report.alt_selection_test({**r, "test_curve": []}) is None


def test_other_sections(results, tmp_path):
    text = report.render(results, tmp_path / "fig")
    assert "| -1.00 |" in _row(text, "no-exid")  # Δ vs full
    assert "| 35.00 |" in _row(text, "full, scored by structure only")
    # TuckER has no modality to perturb: its clean value at the ratio, MoMoK its own run
    assert "| 37.00 |" in _row(text, "ModalityNoise", "tucker", "0.4")
    assert "| 38.00 |" in _row(text, "ModalityNoise", "momok", "0.4")
    assert "| 27.00 |" in _row(text, "LinkSparsify", "tucker", "0.4")
    cost = _row(text, "MKG-Y", "tucker")
    assert "| 12.5 |" in cost and "| 812 |" in cost
    assert "| 776 |" in _row(text, "MKG-Y", "fine-tuned")
    assert "| a | 6 | 50.00 | 60.00 | joint |" in _row(text, "a")  # 3 + 3 queries
    for png in ("robustness.png", "ablations.png", "gates-MKG-Y.png"):
        assert (tmp_path / "fig" / png).stat().st_size > 1000


def test_write_report_replaces_only_its_block(results, tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written speed section\n")
    report.write_report(results, out, tmp_path / "fig")
    first = out.read_text()
    assert first.startswith("# Results\n\nhand-written speed section\n")
    assert first.count(report.BEGIN) == 1 and "(fig/table1-MKG-Y.png)" in first
    out.write_text(first + "\ntrailing text\n")
    (results / "table1" / "m0.json").unlink()
    report.write_report(results, out, tmp_path / "fig")
    second = out.read_text()
    assert second.count(report.BEGIN) == 1 and second.endswith("\ntrailing text\n")
    assert "| MKG-Y | MoMoK (names) |" not in second and "hand-written speed section" in second
    assert "| MKG-W | MoMoK (names) |" in second


def test_a_broken_file_is_named(results, tmp_path):
    (results / "table1" / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        report.render(results, tmp_path / "fig")


def test_unfinished_default_grid_points_and_devices_are_shown(tmp_path):
    root = tmp_path / "results"
    gpu_env = {"cpu_model": "Xeon", "cpu_count": 16, "threads": 1, "torch": "y",
               "device": "cuda:0", "gpu_name": "NVIDIA H200"}
    _write(root, _result("table1", "w1", dict(dataset="MKG-W", model="tucker", stage="grid",
                                              grid={"loss": "ce", "lr": 0.001}), 0.33,
                         env=gpu_env))
    _write(root, _result("cost", "momok-MKG-W", dict(dataset="MKG-W", model="momok"), 0.1,
                         env=gpu_env, peak_gpu_memory_mb=943.9))
    text = report.render(root, tmp_path / "fig")
    missing = _row(text, "MKG-W", "loss=ce, lr=0.003")
    assert "not finished" in missing and "among the finished points only" in missing
    assert "cuda NVIDIA H200" in _row(text, "MKG-W", "TuckER (structure)")
    cost = _row(text, "MKG-W", "momok")
    assert "| cuda NVIDIA H200 |" in cost and "| 944 |" in cost and "| 12.5 |" in cost


def test_baselines_section_selects_on_valid(tmp_path):
    root = tmp_path / "results"
    meta = dict(dataset="MKG-Y", model="distmult", stage="grid")
    _write(root, _result("baselines", "d1", {**meta, "grid": {"lr": 0.001}}, 0.25,
                         valid_mrr=0.20))
    _write(root, _result("baselines", "d2", {**meta, "grid": {"lr": 0.01}}, 0.22,
                         valid_mrr=0.24))  # worse test, better valid: selected
    row = _row(report.render(root, tmp_path / "fig"), "MKG-Y", "distmult")
    assert "| lr=0.01 |" in row and "| 22.00 |" in row
    assert "lr=0.001: 20.00; lr=0.01: 24.00" in row
    _write(root, _result("baselines", "c1", dict(dataset="MKG-Y", model="complex",
                                                 stage="grid", grid={"lr": 0.01}), 0.3))
    row = _row(report.render(root, tmp_path / "fig"), "MKG-Y", "complex")
    assert "lr=0.001: not finished; lr=0.01: 30.00" in row


def test_encoders_section_compares_with_its_table1_run_at_both_budgets(tmp_path):
    root = tmp_path / "results"
    ref = _result("table1", "tucker-ref", dict(dataset="MKG-Y", model="tucker", stage="grid",
                                                grid={"lr": 0.003}), 0.36, max_epochs=300)
    # the reference's curves: valid best at epoch 10 within a 12-epoch budget (test 0.30 there)
    ref["valid_curve"] = _curve([0.1, 0.2, 0.25, 0.24], key="mrr")
    ref["test_curve"] = _curve([0.2, 0.30, 0.31, 0.33])
    _write(root, ref)
    _write(root, _result("encoders", "tucker-rgcn", dict(
        dataset="MKG-Y", model="tucker", encoder={"name": "rgcn"}, compare_to="tucker-ref"),
        0.35, max_epochs=12))
    row = _row(report.render(root, tmp_path / "fig"), "MKG-Y", "R-GCN")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "35.00" and cells[8] == "`tucker-ref`"
    assert cells[9:13] == ["36.00", "-1.00", "30.00", "+5.00"]
    assert report.selected_within(ref, 5) == pytest.approx(0.2)
    assert report.selected_within(ref, 20) == pytest.approx(0.31)


def test_status_counts_planned_runs_against_result_files(tmp_path):
    from momok_pyg import reproduce as R
    root = tmp_path / "results"
    name = "tucker-MKG-Y-lossce-lr0.001-seed0"  # a planned Table 1 grid run
    _write(root, _result("table1", name, dict(dataset="MKG-Y", model="tucker", stage="grid",
                                              grid={"loss": "ce", "lr": 0.001}), 0.36))
    text = report.render(root, tmp_path / "fig")
    planned = len(R.plan("table1", R.Options(results_dir=str(root))))
    row = _row(text, "`table1`")
    assert f"| 1 / {planned} |" in row and name not in row
    assert "| 0 / 2 |" in _row(text, "`unseen`")
    assert "`momok-MKG-Y-finetuned-seed0`, `momok-MKG-Y-fixed-seed0`" in _row(text, "`unseen`")


def test_a_copied_result_names_its_source_and_both_commands(results, tmp_path):
    copied = _result("ablations", "full", {"row": "full"}, 0.40, command="momok-pyg reproduce "
                     "table1 --models momok", reused={"experiment": "table1", "name": "m0",
                                                      "command": "momok-pyg reproduce ablations"})
    _write(results, copied)
    section = report.render(results, tmp_path / "fig").split("### Table 2 / 8")[1]
    section = section.split("###")[0]
    assert "    momok-pyg reproduce table1 --models momok" in section
    assert "    momok-pyg reproduce ablations" in section
    assert "Not trained again: `full` is `table1/m0`" in section
    assert "Not trained again" not in report.render(results, tmp_path / "fig").split(
        "### Table 2 / 8")[0]


def test_robustness_with_only_the_clean_runs_shows_them(tmp_path):
    root = tmp_path / "results"
    for model, mrr in (("momok", 0.4), ("tucker", 0.37)):
        _write(root, _result("robustness", f"{model}-clean",
                             dict(model=model, transform=None, ratio=0.0), mrr))
    text = report.render(root, tmp_path / "fig")
    assert "| 37.00 |" in _row(text, "none", "tucker", "0.0")
    assert "| 40.00 |" in _row(text, "none", "momok", "0.0")
    assert "No perturbed run has finished yet." in text
    assert not (tmp_path / "fig" / "robustness.png").exists()


def test_cost_ratio_only_between_runs_on_one_device(tmp_path):
    root = tmp_path / "results"
    gpu_env = {"cpu_model": "Xeon", "cpu_count": 16, "threads": 1, "torch": "y",
               "device": "cuda:0", "gpu_name": "NVIDIA H200"}
    for ds, model, sec, env in (("DB15K", "tucker", 4.0, gpu_env), ("DB15K", "momok", 17.0,
                                gpu_env), ("MKG-Y", "momok", 2.5, gpu_env),
                                ("MKG-Y", "tucker", 11.0, None)):
        kw = {"env": env} if env else {}
        _write(root, _result("cost", f"{model}-{ds}", dict(dataset=ds, model=model), 0.1,
                             epoch_seconds_median=sec, **kw))
    text = report.render(root, tmp_path / "fig")
    assert "| 4.2× |" in _row(text, "DB15K", "momok")  # 17.0 / 4.0, both on the H200
    assert "| 2.5 | — |" in _row(text, "MKG-Y", "momok")  # its TuckER ran on the CPU
    assert "| 4.0 | — |" in _row(text, "DB15K", "tucker")
    # the same pair measured again on the CPU (planned as `momok-MKG-Y-cpu`): a ratio there
    _write(root, _result("cost", "momok-MKG-Y-cpu", dict(dataset="MKG-Y", model="momok"), 0.1,
                         epoch_seconds_median=33.0))
    text = report.render(root, tmp_path / "fig")
    assert "| 3.0× |" in _row(text, "MKG-Y", "momok", "cpu (TestCPU)")  # 33.0 / 11.0
    assert "| 2.5 | — |" in _row(text, "MKG-Y", "momok", "cuda NVIDIA H200")
    # CPU timings pair only within one CPU model
    epyc = {"cpu_model": "AMD EPYC", "cpu_count": 2, "threads": 2, "torch": "x", "device": "cpu"}
    _write(root, _result("cost", "momok-MKG-Y-cpu", dict(dataset="MKG-Y", model="momok"), 0.1,
                         epoch_seconds_median=33.0, env=epyc))
    text = report.render(root, tmp_path / "fig")
    assert "| 33.0 | — |" in _row(text, "MKG-Y", "momok", "cpu (AMD EPYC)")


def test_the_recipe_rows_are_paired_with_the_run_that_differs_only_in_the_recipe(tmp_path):
    from momok_pyg.training import TrainConfig
    root = tmp_path / "results"
    momok = TrainConfig(dataset="MKG-Y", features="names", lr=1e-3).to_dict()
    tucker = TrainConfig(dataset="MKG-Y", model="tucker", lr=1e-3).to_dict()
    smooth = {"label_smoothing": 0.1, "lr_decay": 0.995}
    _write(root, _result("ablations", "full", {"row": "full"}, 0.368, config=momok))
    # differs in the recipe *and* in lambda: not the twin of the tucker-recipe row
    _write(root, _result("ablations", "balance", {"row": "exid-official-balance"}, 0.30,
                         config={**momok, "lambda_club": 1.5}))
    _write(root, _result("ablations", "mr", {"row": "tucker-recipe"}, 0.372,
                         config={**momok, **smooth}))
    _write(root, _result("ablations", "tr", {"row": "tucker-momok-recipe"}, 0.350,
                         config=tucker))
    # Table 1's TuckER at another lr is not its twin; the one at MoMoK's lr is
    _write(root, _result("table1", "t-a-lr3", dict(dataset="MKG-Y", model="tucker"), 0.369,
                         config={**tucker, **smooth, "lr": 3e-3}))
    _write(root, _result("table1", "t-b-lr1", dict(dataset="MKG-Y", model="tucker"), 0.366,
                         config={**tucker, **smooth}))
    text = report.render(root, tmp_path / "fig")
    section = text[text.index("### Table 2"):]
    # the MoMoK recipe row is an ablation of full; the TuckER one is not
    assert "| +0.40 |" in _row(section, "tucker-recipe")
    assert "| — |" in _row(section, "tucker-momok-recipe")
    assert "Δ is — for a row of another model than the full one (tucker)" in section
    own = "label_smoothing = None, lr_decay = 1.0"
    other = "label_smoothing = 0.1, lr_decay = 0.995"
    assert f"| MoMoK | 1 | {own} | `full` | 36.80 | {other} | `mr` | 37.20 | +0.40 |" in section
    assert (f"| TuckER | 1 | {other} | `t-b-lr1` | 36.60 | {own} | `tr` | 35.00 | -1.60 |"
            in section)
    # without its twin a recipe row gets no line
    (root / "table1" / "t-b-lr1.json").unlink()
    section = report.render(root, tmp_path / "fig")
    assert "| TuckER | " not in section[section.index("### Table 2"):]


def test_matched_recipes_compare_the_models_over_seeds_under_one_recipe(tmp_path):
    from momok_pyg.training import TrainConfig
    root = tmp_path / "results"
    momok = TrainConfig(dataset="MKG-Y", features="names", lr=1e-3).to_dict()
    tucker = TrainConfig(dataset="MKG-Y", model="tucker", lr=1e-3).to_dict()
    smooth = {"label_smoothing": 0.1, "lr_decay": 0.995}
    tm = dict(dataset="MKG-Y", model="tucker", stage="grid")
    # Table 1: TuckER's grid (lr 3e-3 wins on valid), its seeds, MoMoK's seeds
    _write(root, _result("table1", "t-lr1-s0", {**tm, "grid": {"lr": 0.001}}, 0.50,
                         valid_mrr=0.30, config={**tucker, **smooth}))
    for seed, mrr in ((0, 0.366), (1, 0.370), (2, 0.368)):
        stage = "grid" if seed == 0 else "seed"
        _write(root, _result("table1", f"t-lr3-s{seed}", {**tm, "stage": stage,
                             "grid": {"lr": 0.003}}, mrr, valid_mrr=0.34,
                             config={**tucker, **smooth, "lr": 3e-3, "seed": seed}))
        _write(root, _result("table1", f"m-s{seed}", dict(dataset="MKG-Y", model="momok",
                             features="names"), mrr - 0.002, config={**momok, "seed": seed}))
    _write(root, _result("ablations", "full-s0", {"row": "full", "dataset": "MKG-Y", "seed": 0},
                         0.364, config={**momok, "seed": 0},
                         reused={"experiment": "table1", "name": "m-s0", "command": "c"}))
    for seed, mrr in ((0, 0.377), (1, 0.375), (2, 0.373)):
        _write(root, _result("ablations", f"mr-s{seed}", {"row": "tucker-recipe",
                             "dataset": "MKG-Y", "seed": seed}, mrr,
                             config={**momok, **smooth, "seed": seed}))
    for seed, mrr in ((0, 0.360), (1, 0.356)):
        _write(root, _result("ablations", f"tr-s{seed}", {"row": "tucker-momok-recipe",
                             "dataset": "MKG-Y", "seed": seed}, mrr,
                             config={**tucker, "seed": seed}))
    section = report.render(root, tmp_path / "fig")
    section = section[section.index("### Table 2"):]
    end = section.find("\n### ", 4)  # up to the next section, if any
    section = section if end < 0 else section[:end]

    def ms(xs):
        return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"

    own = _row(section, "MoMoK's (label_smoothing = None, lr_decay = 1.0)")
    assert f"| {ms([0.364, 0.368, 0.366])} | 3 |" in own  # Table 1's MoMoK seeds
    assert f"| {ms([0.360, 0.356])} | 2 |" in own and "`tr-s1`" in own
    assert f"| {100 * (0.366 - 0.358):+.2f} |" in own
    other = _row(section, "TuckER's (label_smoothing = 0.1, lr_decay = 0.995)")
    assert f"| {ms([0.377, 0.375, 0.373])} | 3 |" in other
    # Table 1's TuckER row: the selected grid point's seeds, not the other grid point
    assert f"| {ms([0.366, 0.370, 0.368])} | 3 |" in other and "t-lr1" not in other
    assert f"| {100 * (0.375 - 0.368):+.2f} |" in other
    # the recipe swap pairs every seed with its own twin: the full row (seed 0), then Table
    # 1's MoMoK seeds; Δ is the mean ± std of the paired differences
    swap = _row(section, "MoMoK", "3")
    assert "`full-s0`, `m-s1`, `m-s2`" in swap and "`mr-s0`, `mr-s1`, `mr-s2`" in swap
    diffs = [0.377 - 0.364, 0.375 - 0.368, 0.373 - 0.366]
    assert (f"| {100 * statistics.mean(diffs):+.2f} ± {100 * statistics.stdev(diffs):.2f} |"
            in swap)
    # TuckER with MoMoK's recipe at seed 1 has no twin (Table 1's seeds are at another lr)
    assert f"| `tr-s0` | 36.00 | {100 * (0.360 - 0.50):+.2f} |" in _row(section, "TuckER", "1")
    # the ablation table itself shows each row once, at its first seed
    assert sum(line.startswith("| tucker-recipe |") for line in section.splitlines()) == 1
    assert "| 37.70 |" in _row(section, "tucker-recipe")


def test_seed_noise_of_the_full_configuration_is_read_from_its_other_seeds(tmp_path):
    from momok_pyg.training import TrainConfig
    root = tmp_path / "results"
    cfg = TrainConfig(dataset="MKG-Y", features="names").to_dict()
    cfg.pop("q_views")  # written before the key existed: its default applies
    for seed, mrr in ((0, 0.368), (1, 0.366), (2, 0.364)):
        _write(root, _result("table1", f"m{seed}", dict(dataset="MKG-Y", model="momok",
                             features="names", stage="seed"), mrr,
                             config={**cfg, "seed": seed, "threads": 1 + seed,
                                     "root": f"/somewhere/{seed}"}))
    # another recipe (lr) is not a seed of it; a copied result is not counted twice
    _write(root, _result("table1", "other-lr", dict(dataset="MKG-Y", model="momok",
                         features="names", stage="seed"), 0.2, config={**cfg, "lr": 0.01}))
    _write(root, _result("ablations", "full", {"row": "full"}, 0.368, config=cfg,
                         reused={"experiment": "table1", "name": "m0", "command": "c"}))
    _write(root, _result("ablations", "no-exid", {"row": "no-exid", "switch": {"exid": False}},
                         0.365, config={**cfg, "exid": False}))
    everything = report.load_all(root)
    full = next(r for r in everything["ablations"] if r["name"] == "full")
    mean, std, names = report.seed_spread(full, everything)
    assert names == ["m0", "m1", "m2"]
    assert mean == pytest.approx(0.366) and std == pytest.approx(0.002)
    text = report.render(root, tmp_path / "fig")
    assert ("the full configuration's test MRR is 36.60 ± 0.20 over 3 seeds "
            "(`m0`, `m1`, `m2`)") in text
    # the switches of each row; ExID's weight where the result keeps its training curve
    section = text[text.index("### Table 2"):]
    assert "Each row changes the full configuration by: `no-exid`: exid = False." in section
    assert "Weight of ExID" not in section
    _write(root, _result("ablations", "exid-official-balance",
                         {"row": "exid-official-balance", "switch": {"lambda_club": 1.5}},
                         0.37, config={**cfg, "lambda_club": 1.5},
                         train_curve=[{"epoch": 10, "loss": 2.0, "mi_upper": 4.0}]))
    section = report.render(root, tmp_path / "fig")
    section = section[section.index("### Table 2"):]
    assert ("`exid-official-balance`: lambda_club = 1.5; `no-exid`: exid = False.") in section
    assert "epoch means; rows whose result keeps its training curve): " \
        "exid-official-balance 300%." in section
    # a result written before the config kept lambda_club: the config's default applies
    no_lambda = {k: v for k, v in cfg.items() if k != "lambda_club"}
    assert report.exid_share({"config": no_lambda, "best_epoch": 10, "train_curve": [
        {"epoch": 10, "loss": 2.0, "mi_upper": 4.0}]}) == pytest.approx(
            2 * TrainConfig.lambda_club)
    # TuckER (no ExID, though its config keeps the flag) and K = 1 have no ExID weight
    curve = {"best_epoch": 10, "train_curve": [{"epoch": 10, "loss": 2.0, "mi_upper": 0.0}]}
    assert report.exid_share({**curve, "config": {**cfg, "model": "tucker"}}) is None
    assert report.exid_share({**curve, "config": {**cfg, "num_experts": 1}}) is None
    assert report.exid_share({**curve, "config": cfg}) == 0.0
    # a configuration with one seed gives no line
    lone = _result("ablations", "no-exid", {"row": "no-exid"}, 0.365,
                   config={**cfg, "exid": False})
    assert report.seed_spread(lone, everything) is None


def test_epochs_of_a_run_and_of_members_trained_apart():
    from momok_pyg.report.formatting import epochs
    assert epochs({"best_epoch": 40, "epochs_run": 70, "stopped_early": True}) == \
        "best 40 of 70, early stop"
    assert epochs({"best_epoch": 90, "epochs_run": 90, "stopped_early": False,
                   "valid_still_rising": True}) == "best 90 of 90 (valid still rising)"
    # w/o joint training: each member trained and stopped on its own
    apart = {"member_epochs": {
        "structure": {"best_epoch": 170, "epochs_run": 200, "stopped_early": True},
        "text": {"best_epoch": 75, "epochs_run": 75, "stopped_early": False,
                 "valid_still_rising": True}}}
    assert epochs(apart) == ("structure best 170 of 200, early stop; "
                             "text best 75 of 75 (valid still rising)")


def test_a_run_resumed_on_another_machine_lists_both(tmp_path):
    # the JSON's env is the final process's; the starts say where the earlier epochs ran
    root = tmp_path / "results"
    gpu = {"after_epoch": 0, "cpu_model": "Xeon", "cpu_count": 16, "threads": 1,
           "torch": "y", "device": "cuda:0", "gpu_name": "NVIDIA H200"}
    cpu = {"after_epoch": 40, "cpu_model": "TestCPU", "cpu_count": 2, "threads": 1,
           "torch": "x", "device": "cpu"}
    _write(root, _result("table1", "w1", dict(dataset="MKG-W", model="tucker", stage="grid",
                                              grid={"loss": "ce", "lr": 0.001}), 0.33,
                         starts=[gpu, cpu]))
    text = report.render(root, tmp_path / "fig")
    assert "| cuda NVIDIA H200 + cpu |" in _row(text, "MKG-W", "loss=ce, lr=0.001")
    assert "| cpu, cuda NVIDIA H200 |" in _row(text, "MKG-W", "TuckER (structure)")
    machine = next(line for line in text.splitlines() if "Machine:" in line)
    assert "Xeon, 16 CPUs" in machine and "TestCPU, 2 CPUs" in machine


def test_every_command_that_trained_a_run_is_listed(tmp_path):
    # a run begun by one call (2 threads) and finished by another (1 thread): both written by
    root = tmp_path / "results"
    first = "momok-pyg reproduce table1 --threads 2 --runs w1"
    last = "momok-pyg reproduce table1 --threads 1 --runs w1"
    _write(root, _result("table1", "w1", dict(dataset="MKG-W", model="tucker", stage="grid",
                                              grid={"lr": 0.001}), 0.33, command=last,
                         invocations=[{"command": first, "after_epoch": 0},
                                      {"command": last, "after_epoch": 40}]))
    lines = report.render(root, tmp_path / "fig").splitlines()
    written = lines.index("Written by:")
    assert lines[written + 2:written + 4] == [f"    {last}", f"    {first}"]


def test_evaluation_section_averages_each_protocol_over_the_runs(tmp_path):
    root = tmp_path / "results"
    filters = [["train", "valid", "test"], ["train", "valid"], ["train"], []]
    for seed, base in ((1, 0.38), (2, 0.36)):
        protocols = []
        for i, f in enumerate(filters):
            for tie, gap in (("realistic", 0.0), ("optimistic", 0.001 * seed),
                             ("pessimistic", -0.001 * seed)):
                m = base - 0.04 * i + gap
                protocols.append({"filter": f, "tie": tie, "mrr": m, "head_mrr": m - 0.1,
                                  "tail_mrr": m + 0.1})
        _write(root, {"experiment": "evaluation", "name": f"eval-t{seed}", "kind": "evaluation",
                      "meta": dict(dataset="DB15K", model="tucker", seed=seed),
                      "source": f"t{seed}", "command": "momok-pyg reproduce evaluation",
                      "commit": "abc123", "env": {}, "retrained": seed == 2,
                      "protocols": protocols})
    text = report.render(root, tmp_path / "fig")
    cells = [c.strip() for c in _row(text, "DB15K", "2").strip("|").split("|")]
    # per filter: mean ± std of the realistic MRR over the two runs (0.38 and 0.36, less 4
    # points per filter dropped), the widest optimistic-pessimistic gap, each direction
    assert cells[2:6] == ["37.00 ± 1.41", "33.00 ± 1.41", "29.00 ± 1.41", "25.00 ± 1.41"]
    assert cells[6:10] == ["0.40", "27.00 ± 1.41", "47.00 ± 1.41", "33.86"]
    assert cells[10] == "Table 1's own (1), trained again (1)"
    assert "filter none (raw)" in text and "    momok-pyg reproduce evaluation" in text


def test_recorded_cpu_model_prefers_cpuinfo_and_falls_back_to_the_processor_field():
    # files written before `cpu_model` was recorded name only platform.processor()
    assert recorded_cpu_model({"cpu": "x86_64", "cpu_model": "AMD EPYC"}) == "AMD EPYC"
    assert recorded_cpu_model({"cpu": "x86_64", "cpu_model": None}) == "x86_64"
    assert recorded_cpu_model({}) is None
