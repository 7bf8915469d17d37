r"""Where a run computes: ``TrainConfig.device`` / ``--device auto|cpu|cuda[:i]``.

``"auto"`` picks the first CUDA device when torch sees one, else the CPU. Everything that
holds tensors follows the model's device: the training queries are moved per batch, the
filter index once (:class:`~momok_pyg.metrics.FilteredRankMetric`), checkpoints are always
loaded to the CPU first (``map_location="cpu"``) and copied into the parameters, so a run
started on a GPU resumes on a CPU and the other way round. CPU-only settings (glibc's mmap
threshold, the CPU thread count) stay in force on the host side and do nothing on the GPU.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Union

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str:
    r"""Validates a device string (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    if not isinstance(spec, str) or DEVICE_PATTERN.match(spec) is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got "
                         f"{spec!r}")
    return spec


def resolve_device(spec: Union[str, torch.device] = "auto") -> torch.device:
    r"""The :class:`torch.device` that :obj:`spec` names.

    Raises:
        ValueError: :obj:`spec` is not a device string of the form above.
        RuntimeError: a CUDA device is asked for but torch sees none (or fewer).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {spec!r}: torch sees no CUDA device (torch "
                               f"{torch.__version__}, built for CUDA "
                               f"{torch.version.cuda}); use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA "
                               f"device(s) visible")
        device = torch.device("cuda", index)
    return device


def device_info(device: torch.device) -> Dict[str, Any]:
    r"""What a result file records about :obj:`device` (name, memory, CUDA version)."""
    device = torch.device(device)
    out: Dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu_name=props.name, gpu_memory_mb=round(props.total_memory / 2**20),
                   cuda=torch.version.cuda)
    return out


def reset_peak_memory(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Union[float, None]:
    r"""Peak memory the caching allocator handed out on a CUDA :obj:`device` since the last
    reset, in MB (``None`` on the CPU, where the run's peak RSS is recorded instead)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def model_device(model: torch.nn.Module) -> torch.device:
    r"""The device of :obj:`model`'s first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
