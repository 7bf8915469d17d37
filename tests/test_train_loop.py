"""Training loop: best-valid selection, early stopping, determinism, the ensemble ablation,
bf16 and resume safety, on a small synthetic MMKG (CPU, 1 thread)."""
import json

import pytest
import torch

from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.training import (
    EnsembleScorer,
    TrainConfig,
    evaluate_run,
    load_checkpoint,
    load_model,
    train,
)
from momok_pyg.training import loop as loop_mod
from momok_pyg.training.step import build_optimizers

TINY = dict(num_entities=600, num_triples=8000, num_groups=10, num_attributes=5)


def tiny_config(**kw):
    base = dict(synthetic=TINY, dim=32, lr=0.01, batch_size=512, epochs=3, eval_every=1,
                patience=100, threads=1, progress=False)
    base.update(kw)
    return TrainConfig.for_dataset("synthetic", **base)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_mmkg(**TINY)


def _quiet(_):
    pass


def _comparable(metrics):
    return {k: metrics[k] for k in ("best_epoch", "test", "per_modality", "valid_curve",
                                    "train_curve")}


def test_selection_and_early_stopping_follow_the_valid_curve(tmp_path, data, monkeypatch):
    # Valid MRRs are scripted (the real test metrics are still computed from best.pt):
    # best at epoch 2, then 3 evaluations without improvement -> stop after epoch 5.
    scripted = iter([0.10, 0.30, 0.20, 0.30, 0.29, 0.5, 0.6])
    real = loop_mod._evaluate

    def fake(model, data_, split, config, filter_index, modalities=None, **kw):
        if split == "valid":
            return {"mrr": next(scripted), "hits@10": 0.0}
        return real(model, data_, split, config, filter_index, modalities, **kw)

    monkeypatch.setattr(loop_mod, "_evaluate", fake)
    cfg = tiny_config(epochs=10, patience=3)
    m = train(cfg, tmp_path, data=data, log=_quiet)
    assert m["stopped_early"] and m["epochs_run"] == 5
    assert [c["epoch"] for c in m["valid_curve"]] == [1, 2, 3, 4, 5]
    assert m["best_epoch"] == 2 and m["best_valid"]["mrr"] == 0.30
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 5
    # The reported test metrics are those of best.pt (epoch 2), not of the last model.
    monkeypatch.setattr(loop_mod, "_evaluate", real)
    again = evaluate_run(tmp_path, data=data)
    assert again == m["test"]
    last = evaluate_run(tmp_path, data=data, which="last", breakdowns=False)
    assert last["mrr"] != m["test"]["mrr"]
    # Resuming a stopped run trains no further epoch and reports the same metrics.
    m2 = train(cfg, tmp_path, data=data, log=_quiet)
    assert m2["epochs_run"] == 5 and m2["test"] == m["test"]


def test_real_run_picks_max_valid_epoch_and_reports_its_test_metrics(tmp_path, data):
    m = train(tiny_config(epochs=4, lr=0.02), tmp_path, data=data, log=_quiet)
    curve = m["valid_curve"]
    best = max(curve, key=lambda c: (c["mrr"], -c["epoch"]))
    assert m["best_epoch"] == best["epoch"]
    # the run learned something (random ranking of 600 entities: MRR ~ 0.01)
    assert m["test"]["mrr"] > 0.1
    assert evaluate_run(tmp_path, data=data) == m["test"]
    valid = evaluate_run(tmp_path, split="valid", data=data, breakdowns=False)
    assert valid["mrr"] == best["mrr"]
    for mod, res in m["per_modality"].items():
        assert evaluate_run(tmp_path, data=data, modalities=[mod], breakdowns=False) == res
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["mrr"] == m["test"]["mrr"]
    assert saved["env"]["threads"] == 1 and saved["env"]["torch"] == torch.__version__
    assert set(saved["timing"]) >= {"epoch_seconds", "elapsed_seconds", "valid_eval_seconds"}
    assert {"head", "tail", "per_relation", "unseen_entity"} <= set(saved["test"])


def test_same_seed_same_metrics_other_seed_differs(tmp_path, data):
    runs = [train(tiny_config(epochs=2, seed=s), tmp_path / f"r{i}", data=data, log=_quiet)
            for i, s in enumerate((3, 3, 4))]
    assert _comparable(runs[0]) == _comparable(runs[1])
    assert runs[0]["test"]["mrr"] != runs[2]["test"]["mrr"]


def test_resume_refuses_changed_settings_and_overwrite_restarts(tmp_path, data):
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path, data=data, log=_quiet)
    with pytest.raises(ValueError, match=r"dim \(32 -> 16\)"):
        train(tiny_config(epochs=1, dim=16), tmp_path, data=data, log=_quiet)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(cfg, tmp_path, data=data, resume=False, log=_quiet)
    m = train(tiny_config(epochs=1, dim=16), tmp_path, data=data, overwrite=True, log=_quiet)
    assert m["config"]["dim"] == 16 and m["epochs_run"] == 1


def test_without_joint_training_trains_one_model_per_modality_and_sums_them(tmp_path, data):
    cfg = tiny_config(epochs=1, joint=False)
    m = train(cfg, tmp_path, data=data, log=_quiet)
    assert m["members"] == ["structure", "image", "text"]
    for name in m["members"]:
        assert (tmp_path / f"member-{name}" / "best.pt").is_file()
    model, _, _ = load_model(tmp_path, data=data)
    assert isinstance(model, EnsembleScorer)
    assert model.members["image"].expert_modalities == ["image"]
    assert model.members["structure"].expert_modalities == ["structure"]
    head, rel = torch.tensor([0, 5, 7]), torch.tensor([0, 3, 20])
    expect = sum(member.predict(head, rel) for member in model.members.values())
    assert torch.allclose(model.predict(head, rel), expect)
    assert evaluate_run(tmp_path, data=data) == m["test"]
    member = json.loads((tmp_path / "member-image" / "metrics.json").read_text())
    assert m["per_modality"]["image"]["mrr"] == member["test"]["mrr"]
    # each member's epochs and commits reach the ensemble's metrics and its result JSON
    from momok_pyg.reproduce.plans import RunSpec
    from momok_pyg.reproduce.runner import summarise
    result = summarise(RunSpec("ablations", "no-joint", cfg, {}), m, "cmd", 1.0, None)
    for name in m["members"]:
        member = json.loads((tmp_path / f"member-{name}" / "metrics.json").read_text())
        own = {k: member[k] for k in ("best_epoch", "epochs_run", "stopped_early")}
        assert m["member_epochs"][name] == own == {"best_epoch": 1, "epochs_run": 1,
                                                   "stopped_early": False}
        assert result["member_epochs"][name] == {**own, "valid_still_rising": True}
        assert set(member["git_commits"]) <= set(m["git_commits"])
    assert result["commits"] == m["git_commits"]
    # and each member's (re)start, tagged with the member: one fresh start each here
    assert [(s["member"], s["after_epoch"]) for s in result["starts"]] == [
        (name, 0) for name in m["members"]]
    # the ensemble has no epochs of its own: nothing at the top level to contradict members
    assert "best_epoch" not in m
    assert not {"best_epoch", "epochs_run", "stopped_early", "valid_still_rising"} & set(result)
    from momok_pyg.training.runs import _last_places
    # members trained one after another, each resumed at the end for its final test
    assert _last_places(["a", "z", "b", "c", "z"]) == ["a", "b", "c", "z"]


def test_ablation_switches_reach_the_model(tmp_path, data):
    cfg = tiny_config(epochs=1, exid=False, fusion="mean", noise=False,
                      rel_temperature=False, eval_modalities=["structure", "joint"],
                      bf16=True)
    m = train(cfg, tmp_path, data=data, log=_quiet)
    model, _, _ = load_model(tmp_path, data=data)
    assert model.exid is None and model.temperature is None
    assert not any(e.noise for e in model.experts.values())
    assert model.mujod.entity_fusion.fusion == "mean"
    assert m["train_curve"][0]["mi_upper"] == 0.0
    assert all(v == v for v in m["train_curve"][0].values())  # finite under bf16
    assert evaluate_run(tmp_path, data=data, breakdowns=False)["mrr"] == m["test"]["mrr"]
    with pytest.raises(ValueError, match="eval_modalities"):
        train(tiny_config(epochs=1, eval_modalities=["smell"]), tmp_path / "bad", data=data,
              log=_quiet)


def test_adam_in_backward_trains_exactly_like_plain_adam(data):
    # BackwardAdam steps every parameter inside backward and frees its gradient; the
    # parameters after two epochs must equal those of torch.optim.Adam stepped after backward
    from momok_pyg.datasets import get_triples
    from momok_pyg.training import BackwardAdam, OneToNQueries, build_model, train_epoch
    torch.set_num_threads(1)
    queries = OneToNQueries(get_triples(data, "train"), data["entity"].num_nodes,
                            data.num_relations)
    states = []
    for in_backward in (False, True):
        config = tiny_config(optimizer_in_backward=in_backward)
        model = build_model(config, data)
        opt, q_opt = build_optimizers(model, config)
        assert isinstance(opt, BackwardAdam) == in_backward
        torch.manual_seed(0)
        for epoch in (1, 2):
            train_epoch(model, queries, opt, q_opt, config, epoch)
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=1e-6, msg=name)
