r"""Markdown formatting of result numbers: percentages, mean ± std, tables, epochs,
devices, machines and each section's provenance lines."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from momok_pyg.machine import recorded_cpu_model
from momok_pyg.report.results import AllResults, seed_spread


def pct(x: Optional[float]) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def mean_std(xs: Sequence[Optional[float]], signed: bool = False) -> str:
    r"""``"mean ± std"`` of fractions in percent (sample std; the mean alone for one value,
    — for none); :obj:`signed` prints the mean's sign (differences)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    sign = "+" if signed else ""
    if len(xs) == 1:
        return f"{100 * xs[0]:{sign}.2f}"
    return f"{100 * statistics.mean(xs):{sign}.2f} ± {100 * statistics.stdev(xs):.2f}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def epochs(r: Dict[str, Any]) -> str:
    members = r.get("member_epochs")
    if members:  # modalities trained apart (no joint): each member stopped on its own
        return "; ".join(f"{m} {epochs(e)}" for m, e in members.items())
    rising = " (valid still rising)" if r.get("valid_still_rising") else ""
    stop = ", early stop" if r.get("stopped_early") else ""
    return f"best {r.get('best_epoch')} of {r.get('epochs_run')}{stop}{rising}"


def _device_of(env: Dict[str, Any]) -> str:
    dev = str(env.get("device", "cpu"))
    return f"cuda {env['gpu_name']}" if dev.startswith("cuda") and env.get("gpu_name") else dev


def device(r: Dict[str, Any]) -> str:
    r"""``"cpu"`` or the GPU's name (``"cuda NVIDIA H200"``) a run's final process ran on."""
    return _device_of(r.get("env") or {})


def machine(r: Dict[str, Any]) -> str:
    r"""The device a run's final process ran on, with the CPU model on a CPU
    (``"cpu (AMD EPYC)"``): CPU timings compare only within one CPU model."""
    env = r.get("env") or {}
    dev = _device_of(env)
    model = recorded_cpu_model(env)
    return f"{dev} ({model})" if dev == "cpu" and model else dev


def _envs(r: Dict[str, Any]) -> List[Dict[str, Any]]:
    r"""The environment of each (re)start of a run (``starts``), then the final process's
    (``env``)."""
    return [*(r.get("starts") or []), r.get("env") or {}]


def run_devices(r: Dict[str, Any]) -> List[str]:
    r"""Every device a run trained on, in order of its (re)starts, once each."""
    return list(dict.fromkeys(_device_of(env) for env in _envs(r)))


def trained_on(r: Dict[str, Any]) -> str:
    r"""The device column of a run: its devices joined by ``" + "`` (a run resumed on
    another device trained on both)."""
    return " + ".join(run_devices(r))


def devices(results: Iterable[Dict[str, Any]]) -> str:
    return ", ".join(sorted({d for r in results for d in run_devices(r)}))


def machines(results: Iterable[Dict[str, Any]]) -> str:
    r"""Every machine the runs trained on: each (re)start's (``starts``, a resumed run may
    span several) and the final one's (``env``), once each."""
    seen = []
    for r in results:
        for env in _envs(r):
            m = (f"{recorded_cpu_model(env)}, {env.get('cpu_count')} CPUs, "
                 f"{env.get('threads')} torch thread(s), device {env.get('device', 'cpu')}, "
                 f"torch {env.get('torch')}")
            if m not in seen:
                seen.append(m)
    return "; ".join(seen) or "unknown"


def provenance(results: Sequence[Dict[str, Any]]) -> List[str]:
    # every call that trained a run (a resumed run may have had several); a reused result
    # keeps the commands that trained it, and the copying command is listed too
    commands = sorted({r.get("command") or "?" for r in results} |
                      {i["command"] for r in results for i in r.get("invocations") or []
                       if i.get("command")} |
                      {r["reused"]["command"] for r in results
                       if (r.get("reused") or {}).get("command")})
    # every commit a run trained under (a resumed run may span several)
    commits = sorted({str(c)[:12] for r in results
                      for c in (r.get("commits") or [r.get("commit")])})
    out = ["Written by:", ""]
    out += [f"    {c}" for c in commands]
    out += ["", f"Commits: {', '.join(f'`{c}`' for c in commits)}. Machine: {machines(results)}."
            f" Files: `{Path(results[0]['_file']).parent}/` ({len(results)} JSON)."]
    reused = [r for r in results if r.get("reused")]
    if reused:
        out += ["", "Not trained again: " + "; ".join(
            f"`{r['name']}` is `{r['reused']['experiment']}/{r['reused']['name']}`"
            for r in sorted(reused, key=lambda r: r["name"])) +
            " (the same configuration and budget; its result file is copied)."]
    return out


def with_args(name: str, args: Dict[str, Any]) -> str:
    r"""``"name (k1=v1, k2=v2)"``, or :obj:`name` alone without arguments."""
    return f"{name} ({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else name


def seed_note(run: Optional[Dict[str, Any]], everything: Optional[AllResults],
              label: str) -> List[str]:
    spread = None if run is None else seed_spread(run, everything)
    if spread is None:
        return []
    mean, std, names = spread
    return ["", f"Seed noise: the {label} configuration's test MRR is {100 * mean:.2f} ± "
            f"{100 * std:.2f} over {len(names)} seeds ({', '.join(f'`{n}`' for n in names)}); "
            f"a one-seed difference of about that size is not an effect."]
