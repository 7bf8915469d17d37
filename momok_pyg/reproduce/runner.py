r"""Running the planned runs: one child process per training run (``momok-pyg train
--config``, its own peak RSS), a lock file per run directory so that several processes share
an experiment, and the result JSON of each finished run (:func:`summarise`)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from momok_pyg.training.checkpoint import atomic_write_json
from momok_pyg.training.loop import read_progress

from .plans import RESULT_VERSION, Options, RunSpec, load_results, plan


class _Lock:
    r"""An exclusive claim on a run directory. ``.reproduce.lock`` holds one pid per line:
    the process that claimed it and, while it trains, its training child (:meth:`add`). The
    lock is held while any of them lives, so a trainer that outlived its runner still keeps
    the run to itself; a lock whose processes are all gone is taken over."""
    NAME = ".reproduce.lock"

    def __init__(self, run_dir: Path):
        self.path = run_dir / self.NAME

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self.held():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return True
        return False

    def add(self, pid: int) -> None:
        r"""Records :obj:`pid` (a training child) as a holder too."""
        with open(self.path, "a") as f:
            f.write(f"{pid}\n")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def pids(self) -> List[int]:
        try:
            return [int(x) for x in self.path.read_text().split()]
        except (OSError, ValueError):
            return []

    def held(self) -> bool:
        r"""Whether a live process holds the lock (a stale file does not count)."""
        return any(pid > 0 and _alive(pid) for pid in self.pids())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped, e.g. by a container's init) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def median_epoch_seconds(epoch_seconds: Sequence[float]) -> Optional[float]:
    r"""Median seconds per epoch after the first (which pays for compilation and allocator
    warm-up); the first alone when it is the only one; ``None`` when no epoch was timed."""
    xs = list(epoch_seconds[1:]) or list(epoch_seconds)
    return float(statistics.median(xs)) if xs else None


def _upstream_style(curve: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    r"""Each metric's best value over the periodic test evaluations, as upstream's training
    script reports it (max of MRR / Hits, min of MR, each from its own epoch)."""
    if not curve:
        return None
    out: Dict[str, Any] = {}
    for key in ("mrr", "hits@1", "hits@3", "hits@10"):
        best = max(curve, key=lambda c: c[key])
        out[key], out[f"{key}_epoch"] = best[key], best["epoch"]
    best = min(curve, key=lambda c: c["mr"])
    out["mr"], out["mr_epoch"] = best["mr"], best["epoch"]
    out["evaluations"] = len(curve)
    return out


def _epoch_fields(metrics: Dict[str, Any], valid_curve: List[Dict[str, Any]]
                  ) -> Dict[str, Any]:
    r"""How long a run trained: epochs run, best epoch, whether patience stopped it, and
    whether valid was still rising (the best evaluation is the last one and patience did
    not stop it)."""
    last_eval = valid_curve[-1]["epoch"] if valid_curve else None
    return {"epochs_run": metrics.get("epochs_run"), "best_epoch": metrics.get("best_epoch"),
            "stopped_early": metrics.get("stopped_early"),
            "valid_still_rising": (not metrics.get("stopped_early")
                                   and metrics.get("best_epoch") == last_eval)}


def summarise(spec: RunSpec, metrics: Dict[str, Any], command: str, wall: float,
              peak_rss_mb: Optional[float],
              invocations: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    r"""The result JSON of a finished training run (what :mod:`momok_pyg.report` reads).
    :obj:`command` is the call that finished it; :obj:`invocations` every recorded call that
    trained it (see :func:`record_invocation`)."""
    test = metrics["test"]
    keep = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "count")
    valid_curve = metrics.get("valid_curve") or []
    member_curves = metrics.get("member_valid_curves") or {}
    timing = metrics.get("timing", {})
    epoch_seconds = timing.get("epoch_seconds", [])
    return {
        "version": RESULT_VERSION,
        "experiment": spec.experiment,
        "name": spec.name,
        "meta": spec.meta,
        "command": command,
        "config": spec.config.to_dict(),
        "env": metrics.get("env"),
        "commit": (metrics.get("env") or {}).get("git_commit"),
        # every commit the run trained under, in order (resumed runs may span several)
        "commits": metrics.get("git_commits") or [(metrics.get("env") or {}).get("git_commit")],
        # every (re)start: the epoch it resumed after, its commit, machine and thread count
        "starts": metrics.get("starts") or [],
        # every `momok-pyg reproduce` call that (re)started it, with the epoch it resumed after
        "invocations": invocations or [{"command": command, "after_epoch": None}],
        "model": metrics.get("model"),
        "max_epochs": spec.config.epochs,
        # modalities trained apart (w/o joint training) have no epochs of their own: each
        # member's epochs and curve instead
        **({"member_epochs": {m: _epoch_fields(e, member_curves.get(m) or [])
                              for m, e in metrics["member_epochs"].items()},
            "member_valid_curves": member_curves}
           if "member_epochs" in metrics else _epoch_fields(metrics, valid_curve)),
        "wall_seconds": timing.get("elapsed_seconds"),
        "epoch_seconds_median": median_epoch_seconds(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "peak_rss_mb": peak_rss_mb,
        "peak_gpu_memory_mb": metrics.get("peak_gpu_memory_mb"),
        "select_on": metrics.get("select_on", "valid"),
        "best_valid": metrics.get("best_valid"),
        "valid_curve": valid_curve,
        "test_curve": metrics.get("test_curve") or [],
        # per epoch: the KGC loss, the CLUB bound and the Q networks' loss (epoch means)
        "train_curve": metrics.get("train_curve") or [],
        "test": {**{k: test[k] for k in keep if k in test},
                 **{k: {kk: test[k][kk] for kk in keep if kk in test[k]}
                    for k in ("head", "tail", "unseen_entity") if k in test},
                 "per_relation": test.get("per_relation", {})},
        "per_modality": {m: {k: v[k] for k in keep if k in v}
                         for m, v in (metrics.get("per_modality") or {}).items()},
        "upstream_style": _upstream_style(metrics.get("test_curve") or []),
        "num_parameters": metrics.get("num_parameters"),
    }


def child_command(spec: RunSpec, run_dir: Path) -> List[str]:
    r"""Saves :obj:`spec`'s config in :obj:`run_dir` and returns the ``momok-pyg train``
    command that trains it there."""
    cfg = run_dir / "reproduce_config.json"
    spec.config.save(cfg)
    return [sys.executable, "-m", "momok_pyg.cli", "train", "--config", str(cfg),
            "--out", str(run_dir)]


def _die_with_parent(parent: int) -> Optional[Callable[[], None]]:
    r"""A ``preexec_fn`` that makes the child receive ``SIGTERM`` when its parent dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``; ``None`` elsewhere), so that a runner killed even by
    ``SIGKILL`` leaves no trainer behind. libc is resolved here, in the parent: between fork
    and exec the child only calls ``prctl`` and ``getppid``."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def run_training(spec: RunSpec, run_dir: Path, log_path: Path,
                 lock: Optional[_Lock] = None) -> tuple:
    r"""Trains :obj:`spec` in a child process; returns ``(metrics, wall, peak_rss_mb)``.

    The child's pid joins :obj:`lock`. The child dies with this process, and if waiting for
    it is interrupted (``KeyboardInterrupt``, or ``SystemExit`` from the ``SIGTERM``
    handler of ``momok-pyg reproduce``) it is terminated and reaped before the exception
    propagates: the run's checkpoints are written atomically, so it resumes later."""
    cmd = child_command(spec, run_dir)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent(os.getpid()))
        try:
            if lock is not None:
                lock.add(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _stop(proc)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec.experiment}/{spec.name} failed (exit "
                           f"{proc.returncode}); see {log_path}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics, wall, usage.ru_maxrss / 1024.0  # Linux: kilobytes


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    r"""Terminates :obj:`proc` and waits for it (killing it after :obj:`grace` seconds)."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_experiment(experiment: str, opts: Options, command: str = "",
                   limit: Optional[int] = None, log: Callable[[str], None] = print) -> int:
    r"""Runs the pending runs of :obj:`experiment` one after another (skipping finished runs
    and runs another process holds) until none is left or :obj:`limit` runs were done;
    returns the number of runs finished by this call."""
    finished = 0
    failed: set = set()
    while limit is None or finished < limit:
        done = load_results(opts.results_dir, experiment)
        specs = plan(experiment, opts)
        pending = [s for s in specs if s.name not in done and s.name not in failed]
        started = False
        for spec in pending:
            source_done = (done if "source_experiment" not in spec.meta else
                           load_results(opts.results_dir, spec.meta["source_experiment"]))
            if spec.kind != "train" and spec.source not in source_done:
                continue  # its training run is not finished yet
            run_dir = Path(opts.runs_dir) / experiment / spec.name
            # a reuse only copies a finished result (atomically): no lock, no run directory
            lock = None if spec.kind == "reuse" else _Lock(run_dir)
            if lock is not None and not lock.acquire():
                continue
            try:
                if (Path(opts.results_dir) / experiment / f"{spec.name}.json").exists():
                    continue  # finished by another process meanwhile
                started = True
                log(f"[reproduce {experiment}] {spec.name}: start")
                try:
                    # a reuse copies the source result already loaded above
                    result = (reused(spec, source_done[spec.source], command)
                              if spec.kind == "reuse" else
                              _run_one(spec, run_dir, opts, command, lock))
                except Exception as e:  # keep going with the other runs
                    failed.add(spec.name)
                    log(f"[reproduce {experiment}] {spec.name}: FAILED: {e}")
                    break
                atomic_write_json(result, Path(opts.results_dir) / experiment /
                                  f"{spec.name}.json")
                finished += 1
                log(f"[reproduce {experiment}] {spec.name}: done")
            finally:
                if lock is not None:
                    lock.release()
            break
        if not started:
            break
    waiting = [s.name for s in plan(experiment, opts)
               if s.name not in load_results(opts.results_dir, experiment)]
    log(f"[reproduce {experiment}] {finished} run(s) finished by this call; "
        f"{len(waiting)} pending" + (f"; failed: {sorted(failed)}" if failed else ""))
    return finished


def reused(spec: RunSpec, source: Dict[str, Any], command: str) -> Dict[str, Any]:
    r"""The result of a ``"reuse"`` spec: the finished run :obj:`source` (of
    ``spec.meta["source_experiment"]``) under this experiment's name and meta. Its command,
    commits, machine and curves stay those of the training that produced it; ``reused``
    names that run and the command that copied it."""
    return {**source, "experiment": spec.experiment, "name": spec.name, "meta": spec.meta,
            "reused": {"experiment": spec.meta["source_experiment"], "name": spec.source,
                       "command": command}}


def _run_one(spec: RunSpec, run_dir: Path, opts: Options, command: str,
             lock: Optional[_Lock] = None) -> Dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "gates":
        from momok_pyg.interpret import gate_report
        source_dir = (Path(opts.runs_dir) / spec.meta.get("source_experiment", spec.experiment)
                      / spec.source)
        t0 = time.perf_counter()
        out = gate_report(source_dir)
        return {"version": RESULT_VERSION, "experiment": spec.experiment, "name": spec.name,
                "kind": "gates", "meta": spec.meta, "source": spec.source,
                "command": command, "config": spec.config.to_dict(),
                "commit": out["env"].get("git_commit"),
                "env": out.pop("env"), "wall_seconds": time.perf_counter() - t0, **out}
    if spec.kind == "evaluation":
        return _evaluation(spec, run_dir, opts, command, lock)
    invocations = record_invocation(run_dir, command)
    metrics, wall, rss = run_training(spec, run_dir, run_dir / "train.log", lock)
    return summarise(spec, metrics, command, wall, rss, invocations)


#: where an ``"evaluation"`` run trains its source's configuration again when the source's
#: checkpoint is not on this machine
RETRAINED = "model"


def _evaluation(spec: RunSpec, run_dir: Path, opts: Options, command: str,
              lock: Optional[_Lock]) -> Dict[str, Any]:
    import torch

    from momok_pyg.training import evaluation_report
    from momok_pyg.training.loop import BEST
    source_dir = Path(opts.runs_dir) / spec.meta["source_experiment"] / spec.source
    t0 = time.perf_counter()
    training = None
    if not (source_dir / BEST).exists():
        source_dir = run_dir / RETRAINED
        source_dir.mkdir(parents=True, exist_ok=True)
        invocations = record_invocation(source_dir, command)
        metrics, wall, rss = run_training(spec, source_dir, source_dir / "train.log", lock)
        training = summarise(spec, metrics, command, wall, rss, invocations)
    threads = torch.get_num_threads()
    try:  # the ranking runs in this process, with the runs' thread count
        torch.set_num_threads(opts.threads or threads)
        out = evaluation_report(source_dir)
    finally:
        torch.set_num_threads(threads)
    env = out.pop("env")
    return {"version": RESULT_VERSION, "experiment": spec.experiment, "name": spec.name,
            "kind": "evaluation", "meta": spec.meta, "source": spec.source,
            "command": command, "config": spec.config.to_dict(),
            "commit": env.get("git_commit"), "env": env,
            "checkpoint": str(source_dir / BEST), "retrained": training is not None,
            **({"training": training} if training is not None else {}),
            "wall_seconds": time.perf_counter() - t0, **out}


INVOCATIONS = "invocations.json"


def record_invocation(run_dir: Path, command: str) -> List[Dict[str, Any]]:
    r"""Appends :obj:`command` to the ``invocations.json`` of :obj:`run_dir` with the epoch
    of the run's ``progress.json`` it resumes after (``0``: nothing trained yet, and then the
    list starts afresh) and the UTC time, and returns the list, so that a run resumed by
    several commands (another session, another thread count) names them all."""
    path = run_dir / INVOCATIONS
    after = (read_progress(run_dir) or {}).get("epoch") or 0
    try:
        earlier = json.loads(path.read_text()) if after else []
    except (OSError, ValueError):
        earlier = []
    entries = [*earlier, {"command": command, "after_epoch": after,
                          "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    atomic_write_json(entries, path)
    return entries


def status(experiment: str, opts: Options) -> List[Dict[str, Any]]:
    r"""One row per known run: name, state (``done`` / ``running`` / ``partial`` /
    ``pending``), when done its test MRR, and for a started run its ``progress.json``
    (epoch reached, best valid so far; see :func:`momok_pyg.training.loop.progress`)."""
    done = load_results(opts.results_dir, experiment)
    rows = []
    for spec in plan(experiment, opts):
        run_dir = Path(opts.runs_dir) / experiment / spec.name
        if spec.name in done:
            state = "done"
        elif _Lock(run_dir).held():
            state = "running"
        elif (run_dir / "last.pt").exists():
            state = "partial"
        else:
            state = "pending"
        row: Dict[str, Any] = {"name": spec.name, "state": state}
        if spec.kind == "reuse":
            row["reuses"] = f"{spec.meta['source_experiment']}/{spec.source}"
        if spec.name in done and "test" in done[spec.name]:
            row["test_mrr"] = done[spec.name]["test"]["mrr"]
        elif state != "pending":
            progress = read_progress(run_dir)  # None: started before progress.json existed
            if progress is not None:
                row["progress"] = progress
        rows.append(row)
    return rows


def describe(row: Dict[str, Any]) -> str:
    r"""One line of ``momok-pyg reproduce --list`` for a row of :func:`status`."""
    line = f"{row['state']:8s} {row['name']}"
    if "reuses" in row:
        line += f"  = {row['reuses']}"
    if "test_mrr" in row:
        return line + f"  test mrr {row['test_mrr']:.4f}"
    prog = row.get("progress")
    if prog:
        line += f"  epoch {prog['epoch']}/{prog['epochs']}"
        if prog.get("best_valid_mrr") is not None:
            line += f", best valid mrr {prog['best_valid_mrr']:.4f} at {prog['best_epoch']}"
        if prog.get("stopped_early"):
            line += ", early stop (final test pending)"
    return line
