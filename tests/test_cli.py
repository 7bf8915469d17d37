"""``momok-pyg`` command line: train -> evaluate -> predict on a tiny synthetic MMKG."""
import json

import pytest

from momok_pyg.cli import main

TINY = ["num_entities=600", "num_triples=8000", "num_groups=10", "num_attributes=5"]


def test_cli_train_evaluate_predict(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--synthetic", *TINY, "--dim", "16", "--epochs", "2", "--eval-every", "1",
            "--batch-size", "512", "--lr", "0.01", "--threads", "1", "--no-progress",
            "--out", str(run)]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("config.json", "metrics.json", "best.pt", "last.pt"):
        assert (run / name).is_file()
    assert metrics["epochs_run"] == 2 and len(metrics["valid_curve"]) == 2
    assert set(metrics["per_modality"]) == {"structure", "image", "text", "joint"}
    assert metrics["env"]["git_commit"] and metrics["env"]["momok_pyg"]

    # Rerunning the same command resumes (nothing left to train) and reports the same.
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):])["test"]["mrr"] == metrics["test"]["mrr"]

    assert main(["evaluate", "--run", str(run), "--output", str(tmp_path / "ev.json")]) == 0
    assert json.loads((tmp_path / "ev.json").read_text()) == metrics["test"]
    assert main(["evaluate", "--run", str(run), "--modalities", "image", "--no-breakdowns",
                 "--output", str(tmp_path / "img.json")]) == 0
    assert json.loads((tmp_path / "img.json").read_text()) == metrics["per_modality"]["image"]
    # other protocols: raw ranks (no filter) and pessimistic ties rank no target higher
    for extra, name in ((["--filter"], "raw"), (["--tie", "pessimistic"], "pess"),
                        (["--filter", "train"], "train")):
        assert main(["evaluate", "--run", str(run), "--no-breakdowns", *extra,
                     "--output", str(tmp_path / f"{name}.json")]) == 0
    other = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("raw", "pess", "train")}
    assert other["raw"]["mr"] > other["train"]["mr"] >= metrics["test"]["mr"]
    assert other["pess"]["mr"] >= metrics["test"]["mr"]

    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--head", "0", "--relation", "1", "-k", "5",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["direction"] == "tail" and len(res["candidates"]) == 5
    assert [c["rank"] for c in res["candidates"]] == [1, 2, 3, 4, 5]
    assert set(res["gates"]) == {"structure", "image", "text"}
    assert main(["predict", "--run", str(run), "--tail", "3", "--relation", "0", "-k", "3"]) == 0
    assert "(?, " in capsys.readouterr().out


def test_cli_train_without_joint_prints_each_members_best_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--synthetic", *TINY, "--dim", "8", "--epochs", "1", "--no-joint",
                 "--batch-size", "512", "--threads", "1", "--no-progress",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n"):])
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed["best_epoch"] == {m: e["best_epoch"]
                                     for m, e in metrics["member_epochs"].items()}
    assert set(printed["best_epoch"]) == {"structure", "image", "text"}


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "not a run directory" in err and "nothing" in err
    with pytest.raises(SystemExit):
        main(["train", "--features", "pixels"])
    assert main([]) == 2


def test_every_optimisation_switch_reaches_the_config():
    import argparse

    from momok_pyg.cli import add_train_arguments, config_from_args
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    off = config_from_args(p.parse_args(["--dataset", "synthetic", "--no-optimizer-in-backward",
                                         "--bf16"]))
    assert off.optimizer_in_backward is False and off.bf16 is True
    assert config_from_args(p.parse_args(["--dataset", "synthetic"])).optimizer_in_backward
    assert config_from_args(p.parse_args(["--dataset", "synthetic"])).malloc_mmap_threshold \
        == 1 << 20
    assert config_from_args(p.parse_args(["--dataset", "synthetic", "--malloc-mmap-threshold",
                                          "0"])).malloc_mmap_threshold is None
    assert config_from_args(p.parse_args(["--dataset", "synthetic", "--malloc-mmap-threshold",
                                          "4194304"])).malloc_mmap_threshold == 1 << 22
    with pytest.raises(ValueError, match="malloc_mmap_threshold"):
        config_from_args(p.parse_args(["--dataset", "synthetic", "--malloc-mmap-threshold",
                                       "-5"]))
