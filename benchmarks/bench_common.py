"""Shared pieces of ``bench_momok.py``: environment and timing helpers, the MKG-Y data of
the benchmark, and the FLOP counts of one step / evaluation."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RAW = REPO.parent / "shared" / "mmkg"
FEATURE_DIMS = {"image": 383, "text": 384}  # the official MKG-Y shapes (paper Table 5)
BATCH_SIZE = 1024
NUM_EXPERTS = 3
FUSION_HEADS = 2
MATMUL_SHAPE = (1024, 300, 15000)  # [B, d] x [d, N]: one 1-N scoring product
# a large square product: the highest fp32 rate torch.mm reaches on this machine (a 2-core
# AVX-512 CPU runs it ~40 % faster than the scoring shape), the stricter reference
SQUARE_SHAPE = (4096, 4096, 4096)

# ------------------------------------------------------------------------------------------
# small utilities
# ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    r"""Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def cpu_seconds() -> float:
    r"""User + system CPU time of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32,
                  shape: Tuple[int, int, int] = MATMUL_SHAPE, repeats: int = 10,
                  rounds: int = 3) -> float:
    r"""Achieved GFLOP/s of ``torch.mm([m, k], [k, n])`` (median of :obj:`rounds` rounds of
    :obj:`repeats` products, after warm-up)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device, dtype)
    b = torch.randn(k, n, generator=gen).to(device, dtype)
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        rates.append(2.0 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def git_commit() -> str:
    r"""The commit of this checkout (see :func:`momok_pyg.training.checkpoint.git_commit`)."""
    from momok_pyg.training.checkpoint import git_commit as commit
    return commit(REPO)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: /proc/cpuinfo flags that decide the matmul and bf16 rates (recorded when present)
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features() -> Dict[str, Any]:
    r"""What tells two machines of one CPU name apart: torch's kernel capability
    (``torch.backends.cpu.get_cpu_capability()``), ``cpu family`` / ``model`` of
    ``/proc/cpuinfo`` and those of its :data:`MATMUL_FLAGS` it lists (Linux only)."""
    out: Dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability()}
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        return out
    out["family_model"] = f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"
    flags = set(fields.get("flags", "").split())
    out["flags"] = [f for f in MATMUL_FLAGS if f in flags]
    return out


def environment(device: torch.device) -> Dict[str, Any]:
    env = {
        "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "device": str(device), "git_commit": git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch_geometric
        env["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def load_mkgy(raw_root: Path, root: str, seed: int = 0, max_entities: Optional[int] = None):
    r"""MKG-Y (``momok_pyg.datasets.MKGY`` from :obj:`raw_root`) with random seeded image and
    text features of the official shapes (:data:`FEATURE_DIMS`). With :obj:`max_entities`,
    the entities ``0..max_entities-1`` and the triples among them only (smoke tests)."""
    from momok_pyg.datasets import MKGY, build_mmkg, get_triples
    raw = Path(raw_root) / "MKG-Y"
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: MKG-Y raw files not found; pass --raw-root (the "
                                f"folder holding MKG-Y/train.txt, ...)")
    base = MKGY(root=root, raw_from=str(raw), log=False, leak_warning=False)[0]
    num_entities = int(base["entity"].num_nodes)
    triples = {s: get_triples(base, s) for s in ("train", "valid", "test")}
    if max_entities is not None and max_entities < num_entities:
        num_entities = int(max_entities)
        triples = {s: t[(t[:, 0] < num_entities) & (t[:, 2] < num_entities)]
                   for s, t in triples.items()}
    gen = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_entities, d, generator=gen) for m, d in FEATURE_DIMS.items()}
    return build_mmkg(num_entities, int(base.num_relations), triples, features=features,
                      entity_names=base["entity"].name[:num_entities],
                      relation_names=base.relation_names,
                      name="MKG-Y" + ("" if max_entities is None else f"[:{num_entities}]"))


class DeviceQueries:
    r"""Wraps :class:`momok_pyg.training.OneToNQueries` so that ``train_epoch`` gets its
    batches on :obj:`device` and at most :obj:`max_batches` of them (``None`` = all)."""
    def __init__(self, queries, device: torch.device, max_batches: Optional[int] = None):
        self.queries, self.device, self.max_batches = queries, device, max_batches

    def __len__(self) -> int:
        return len(self.queries)

    def num_batches(self, batch_size: int) -> int:
        n = self.queries.num_batches(batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)

    def sparse_target(self, index, dtype=torch.float32):
        return self.queries.sparse_target(index.cpu(), dtype).to(self.device)

    def batches(self, batch_size, generator=None, shuffle=True) -> Iterator:
        for i, (ent, rel, idx) in enumerate(self.queries.batches(batch_size, generator,
                                                                 shuffle)):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield ent.to(self.device), rel.to(self.device), idx


def epoch_batches(queries, batch_size: int, seed: int, epoch: int) -> List[Tuple[int, int]]:
    r"""``(B, U)`` (batch size, distinct relations) of every batch of one epoch, in the
    order ``train_epoch`` draws them."""
    from momok_pyg.training import epoch_generator
    return [(int(rel.numel()), int(torch.unique(rel).numel()))
            for _, rel, _ in queries.batches(batch_size, epoch_generator(seed, epoch))]


# ------------------------------------------------------------------------------------------
# FLOP counting (multiply-add = 2 FLOPs; matmul-like work only, elementwise ops excluded)
# ------------------------------------------------------------------------------------------
def step_flops(kind: str, B: int, U: int, N: int, dim: int, rel_dim: int,
               in_dims: Dict[str, int], num_relations2: int, K: int = NUM_EXPERTS,
               H: int = FUSION_HEADS, joint: bool = True, exid: bool = True,
               train: bool = True, all_entities: bool = True,
               hidden_dropout_mode: str = "sample") -> Dict[str, float]:
    r"""FLOPs of one training step (``train=True``: forward + backward, backward counted as
    twice the forward of every product whose inputs both need gradients) or one evaluation
    batch (``train=False``, forward only, the all-entity part counted once per batch as the
    shipped evaluator runs it), by component.

    ``kind="momok"`` (momok_pyg):

    * ``experts``: every modality's :math:`K` experts over all :math:`N` entities once,
      :math:`2 N d_{in} K d`, plus gate logits / noise / mixing (:math:`3 \cdot 2 N K d`)
      (the training step also recomputes the :math:`B` heads' views, :math:`2 B d_{in} K d`,
      to avoid an :math:`N \times K \times d` gradient; not counted, it is not necessary work);
    * ``fusion``: joint fusion of all :math:`N` candidates and the :math:`B` heads,
      :math:`2 H M n d^2 + 2 H M n d`, and of the :math:`2R` relation rows;
    * ``tucker_core``: :math:`2 U d_r d^2` per scored modality (one contraction per
      distinct relation :math:`U`); ``tucker_apply``: :math:`2 B d^2` per scored modality
      (the official per-sample masks of ``hidden_dropout_mode="sample"`` change which
      entries are multiplied, not how many), twice in training with the ``"gaussian"`` and
      ``"moments"`` modes (their variance product
      :math:`(\mathbf{x} \odot \mathbf{x})(\mathbf{W}_r \odot \mathbf{W}_r)`);
    * ``scoring``: the 1-N products :math:`2 B N d` per scored modality;
    * ``exid``: the CLUB networks (train only; upper bound and :math:`Q_\theta` step).

    ``kind="naive"``: ``experts`` runs for the :math:`B` heads, for the :math:`N`
    candidates and again for :math:`N` entities of the joint modality; ``tucker_core`` is
    contracted per sample, :math:`2 B d_r d^2`; the rest as above.

    ``all_entities=False`` leaves out the all-entity part (experts and fusion of the
    :math:`N` candidates), for evaluation batches that reuse a cache of it.
    """
    if kind not in ("momok", "naive"):
        raise ValueError(f"kind must be 'momok' or 'naive', got {kind!r}")
    bwd = 3.0 if train else 1.0  # forward + 2x forward for input and weight gradients
    M = len(in_dims)
    S = M + (1 if joint else 0)
    d, dr = dim, rel_dim
    n_all = N if all_entities else 0
    expert_rows = (B + 2 * n_all) if kind == "naive" else n_all
    per_row = sum(2 * di * K * d + 3 * 2 * K * d for di in in_dims.values())
    out = {"experts": bwd * expert_rows * per_row}
    fusion = 0.0
    if joint:
        def fuse(n: int, width: int) -> float:
            return 2.0 * H * M * n * width * d + 2.0 * H * M * n * d
        fusion = fuse(n_all, d) + fuse(B, d) + fuse(num_relations2, dr)
    out["fusion"] = bwd * fusion
    contractions = B if kind == "naive" else U
    out["tucker_core"] = bwd * S * 2.0 * contractions * dr * d * d
    gaussian = kind == "momok" and hidden_dropout_mode in ("gaussian", "moments")
    apply_products = 2 if (gaussian and train) else 1
    out["tucker_apply"] = bwd * S * 2.0 * B * d * d * apply_products
    out["scoring"] = bwd * S * 2.0 * B * N * d
    if exid and train and K >= 2:
        pairs = K * (K - 1) // 2
        # two MLPs (d -> d/2 -> d) per pair and modality; upper bound fwd+bwd, Q-step fwd+bwd
        mlp = 2 * (2.0 * B * d * (d // 2) * 2)
        # upper bound: forward + input gradients; Q-step: forward + weight gradients
        out["exid"] = (2.0 + 2.0) * pairs * M * mlp
    out["total"] = float(sum(out.values()))
    return out


def epoch_flops(kind: str, batches: Sequence[Tuple[int, int]], **kw) -> Dict[str, float]:
    r"""Sum of :func:`step_flops` over the ``(B, U)`` of every batch of an epoch."""
    total: Dict[str, float] = {}
    for B, U in batches:
        for k, v in step_flops(kind, B, U, **kw).items():
            total[k] = total.get(k, 0.0) + v
    return total


def eval_flops(kind: str, num_queries: int, batch_size: int, U_per_batch: Sequence[int],
               entities_once: bool = False, **kw) -> Dict[str, float]:
    r"""Forward FLOPs of ranking :obj:`num_queries` in batches of :obj:`batch_size`; the
    all-entity part (experts, candidate fusion) once per batch, or once in total with
    :obj:`entities_once` (``MoMoK.cached_entities``)."""
    total: Dict[str, float] = {}
    sizes = [min(batch_size, num_queries - s) for s in range(0, num_queries, batch_size)]
    for i, (B, U) in enumerate(zip(sizes, U_per_batch)):
        f = step_flops(kind, B, U, train=False, exid=False,
                       all_entities=not (entities_once and i > 0), **kw)
        for k, v in f.items():
            total[k] = total.get(k, 0.0) + v
    return total


def write_result(result: Dict[str, Any], out: Path,
                 print_table: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    r"""Writes a benchmark's :obj:`result` to the JSON :obj:`out` (atomically, creating its
    folder), prints it with :obj:`print_table` and where it went; returns :obj:`result`."""
    from momok_pyg.training.checkpoint import atomic_write_json
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, out)
    print_table(result)
    print(f"\nwrote {out}")
    return result


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    r"""A Markdown table: the header, its rule and one line per row (cells as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
