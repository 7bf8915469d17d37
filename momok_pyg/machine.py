r"""The machine a run computed on, as its result files record it.

Torch-free, so that both the code that writes run records (:mod:`momok_pyg.training`) and
the code that plans runs and reads records back (:mod:`momok_pyg.reproduce`,
:mod:`momok_pyg.report`) take the CPU model from one place. CPU timings compare only within
one CPU model.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def cpu_model() -> Optional[str]:
    r"""The ``model name`` of the first processor in ``/proc/cpuinfo`` (Linux), else ``None``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def recorded_cpu_model(env: Dict[str, Any]) -> Optional[str]:
    r"""The CPU model an environment record of a result (``env`` or one of its ``starts``,
    see :func:`~momok_pyg.training.loop.environment`) names: its ``cpu_model``
    (:func:`cpu_model`), else its ``cpu`` (:func:`platform.processor`; result files written
    before ``cpu_model`` was recorded, or where ``/proc/cpuinfo`` is missing)."""
    return env.get("cpu_model") or env.get("cpu")
