"""A run SIGKILLed mid-training and restarted reaches bitwise the same metrics as an
uninterrupted run with the same seed (CPU, fixed thread count)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from momok_pyg.training import TrainConfig, load_checkpoint, train

TINY = dict(num_entities=600, num_triples=8000, num_groups=10, num_attributes=5)
EPOCHS, KILL_AFTER = 6, 2
ARGS = ["train", "--synthetic"] + [f"{k}={v}" for k, v in TINY.items()] + [
    "--dim", "32", "--lr", "0.01", "--batch-size", "512", "--epochs", str(EPOCHS),
    "--eval-every", "1", "--patience", "100", "--threads", "1", "--seed", "11",
    "--no-progress"]
KEYS = ("best_epoch", "best_valid", "test", "per_modality", "valid_curve", "train_curve",
        "epochs_run")


def _cli(out: Path):
    return subprocess.Popen([sys.executable, "-m", "momok_pyg.cli", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epoch(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["state"]["epoch"])
    except (FileNotFoundError, RuntimeError):
        return 0


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    run = tmp_path / "killed"
    proc = _cli(run)
    deadline = time.monotonic() + 240
    while _epoch(run / "last.pt") < KILL_AFTER:
        if proc.poll() is not None:
            pytest.fail(f"training exited early:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 240 s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _epoch(run / "last.pt")
    assert KILL_AFTER <= killed_at < EPOCHS and not (run / "metrics.json").exists()

    resumed = _cli(run)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed after epoch {killed_at}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert not list(run.glob(".*.tmp"))

    # The uninterrupted reference, same seed and thread count, in this process.
    from momok_pyg.cli import build_parser, config_from_args
    cfg = config_from_args(build_parser().parse_args(ARGS))
    assert cfg == TrainConfig.load(run / "config.json")
    ref = train(cfg, tmp_path / "reference", log=lambda s: None)
    ref = json.loads(json.dumps(ref))  # same float round-trip as metrics.json
    for key in KEYS:
        assert metrics[key] == ref[key], (key, out, metrics["valid_curve"], ref["valid_curve"])
    assert len(metrics["timing"]["epoch_seconds"]) == EPOCHS
