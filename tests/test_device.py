"""Device plumbing (``TrainConfig.device`` / ``--device``): resolution, validation, a
checkpoint that resumes under another device setting, and -- where torch sees a GPU -- a
CUDA run that learns what the CPU run learns."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from momok_pyg.training import TrainConfig, train
from momok_pyg.training.device import check_device_spec, resolve_device

TINY = dict(num_entities=400, num_triples=5000, num_groups=8, num_attributes=4)
#: expected MRR of a uniformly random ranking of N candidates: H_N / N
RANDOM_MRR = sum(1.0 / k for k in range(1, TINY["num_entities"] + 1)) / TINY["num_entities"]


def _config(**kw):
    base = dict(dataset="synthetic", synthetic=TINY, dim=32, lr=0.01, batch_size=512,
                epochs=3, eval_every=1, patience=100, threads=1, seed=5, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_spec_accepts(spec):
    assert check_device_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "", "mps"])
def test_device_spec_rejects_with_expected_forms(spec):
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:<index>'"):
        check_device_spec(spec)
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device=spec)


def test_auto_resolves_by_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="only 2 CUDA"):
        resolve_device("cuda:2")


def test_cli_rejects_unknown_device(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "momok_pyg.cli", "train", "--device", "gpu",
                           "--epochs", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_device_is_recorded_and_a_checkpoint_resumes_under_another_setting(tmp_path):
    # 3 epochs in one go vs 2 epochs on device="cpu" then resumed with device="auto": the
    # device is not a resume key, the checkpoint is loaded to the CPU and copied into the
    # model, so on a CPU-only machine the two runs are bitwise equal
    full = train(_config(device="cpu"), tmp_path / "full")
    train(_config(device="cpu", epochs=2), tmp_path / "split")
    resumed = train(_config(device="auto" if not torch.cuda.is_available() else "cpu"),
                    tmp_path / "split")
    assert resumed["epochs_run"] == 3
    assert resumed["valid_curve"] == full["valid_curve"]
    assert resumed["test"]["mrr"] == full["test"]["mrr"]
    assert full["env"]["device"] == "cpu" and full["peak_gpu_memory_mb"] is None
    start = json.loads((tmp_path / "full" / "env_start.json").read_text())
    assert start["env"]["device"] == "cpu"
    # three epochs of MoMoK reach ~14x the MRR of a random ranking here
    assert full["test"]["mrr"] > 5 * RANDOM_MRR


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_learns_what_the_cpu_run_learns(tmp_path):
    cpu = train(_config(device="cpu", epochs=4), tmp_path / "cpu")
    gpu = train(_config(device="cuda", epochs=4), tmp_path / "cuda")
    assert gpu["env"]["device"] == "cuda:0" and gpu["env"]["gpu_name"]
    assert gpu["peak_gpu_memory_mb"] > 0
    # different kernels and random streams: the same learning, not the same bits
    assert abs(gpu["test"]["mrr"] - cpu["test"]["mrr"]) < 0.05, (gpu["test"], cpu["test"])
    tucker = train(_config(model="tucker", device="cuda", epochs=4), tmp_path / "tucker")
    assert tucker["test"]["mrr"] > 1.5 * RANDOM_MRR  # TuckER learns slowly at this lr


def test_commit_of_a_tree_copy_without_git(tmp_path, monkeypatch):
    from momok_pyg.training.checkpoint import git_commit
    monkeypatch.delenv("MOMOK_PYG_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "0123abc")
    assert git_commit(tmp_path) == "0123abc+copy"
    # it also overrides a checkout's own (possibly stale) git state
    assert git_commit(Path(__file__).parent) == "0123abc+copy"


def test_a_changed_result_does_not_make_the_code_dirty(tmp_path, monkeypatch):
    import subprocess

    from momok_pyg.training.checkpoint import git_commit
    monkeypatch.delenv("MOMOK_PYG_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "results").mkdir()
    for name in ("pkg/code.py", "results/run.json", "RESULTS.md"):
        (tmp_path / name).write_text("1\n")
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    sha = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    # asked from a subfolder, as the package asks for its own checkout
    (tmp_path / "results" / "run.json").unlink()
    (tmp_path / "RESULTS.md").write_text("2\n")
    assert git_commit(tmp_path / "pkg") == sha
    (tmp_path / "pkg" / "code.py").write_text("2\n")
    assert git_commit(tmp_path / "pkg") == sha + "+dirty"


def test_a_run_resumed_under_new_code_records_every_commit(tmp_path, monkeypatch):
    # the commit recorded is the code that ran, not the tree at the end: a run trained for
    # 1 epoch at commit A and resumed at commit B lists both, B as the finishing code
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "aaaa")
    first = train(_config(device="cpu", epochs=1), tmp_path / "r")
    assert first["git_commits"] == ["aaaa+copy"] == [first["env"]["git_commit"]]
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "bbbb")
    resumed = train(_config(device="cpu", epochs=2), tmp_path / "r")
    assert resumed["git_commits"] == ["aaaa+copy", "bbbb+copy"]
    assert resumed["env"]["git_commit"] == "bbbb+copy"
    again = train(_config(device="cpu", epochs=3), tmp_path / "r")  # same code: no repeat
    assert again["git_commits"] == ["aaaa+copy", "bbbb+copy"]


def test_every_restart_records_its_epoch_machine_and_threads(tmp_path, monkeypatch):
    # epoch_seconds of a run resumed at another thread count (or on another machine) can
    # only be read with the starts: each one says from which epoch on it ran, and where
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "aaaa")
    train(_config(device="cpu", epochs=1, threads=1), tmp_path / "r")
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "bbbb")
    train(_config(device="cpu", epochs=3, threads=2), tmp_path / "r")
    out = train(_config(device="cpu", epochs=4, threads=1), tmp_path / "r")
    starts = out["starts"]
    assert [s["after_epoch"] for s in starts] == [0, 1, 3]
    assert [s["threads"] for s in starts] == [1, 2, 1]
    assert [s["git_commit"] for s in starts] == ["aaaa+copy", "bbbb+copy", "bbbb+copy"]
    assert all(s["device"] == "cpu" and s["world_size"] == 1 for s in starts)
    assert starts[-1]["cpu_model"] == out["env"]["cpu_model"]
    assert len(out["timing"]["epoch_seconds"]) == 4


def test_a_checkpoint_from_before_start_tracking_keeps_its_last_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "old")
    train(_config(device="cpu", epochs=1, threads=2), tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    del ckpt["state"]["starts"]  # as written before starts were tracked
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "new")
    out = train(_config(device="cpu", epochs=2, threads=1), tmp_path / "r")
    # the earlier start comes from env_start.json; the epoch it began at is not known
    assert [(s["after_epoch"], s["git_commit"], s["threads"]) for s in out["starts"]] == [
        (None, "old+copy", 2), (1, "new+copy", 1)]


def test_a_checkpoint_from_before_commit_tracking_takes_its_last_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "old")
    train(_config(device="cpu", epochs=1), tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    del ckpt["state"]["commits"]  # as written before commits were tracked
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    monkeypatch.setenv("MOMOK_PYG_COMMIT", "new")
    resumed = train(_config(device="cpu", epochs=2), tmp_path / "r")
    assert resumed["git_commits"] == ["old+copy", "new+copy"]  # from env_start.json
