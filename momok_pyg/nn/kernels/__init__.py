r"""The machinery that makes the paper's modules fast; none of it changes what they compute.

The modules one level up (:mod:`momok_pyg.nn.remoke`, :mod:`~momok_pyg.nn.mujod`,
:mod:`~momok_pyg.nn.tucker`, :mod:`~momok_pyg.nn.exid`, :mod:`~momok_pyg.nn.momok`) read as
the paper's equations and call into these through small named functions. Each is tested
against the plain computation it replaces (values, gradients, and random streams where it
draws masks); what each buys was measured by the benchmark named.

=====================  ==========================================================================
module                 what it buys (benchmark)
=====================  ==========================================================================
``grouped``            the Tucker core :math:`\mathcal{W} \times_1 \mathbf{r}` contracted once per
                       *distinct* relation of a batch instead of once per query, and the grouped
                       products that use it (``benchmarks/bench_momok.py``, RESULTS.md "Speed
                       and memory")
``tucker_dropout``     the official per-sample hidden dropout on :math:`\mathbf{W}_r` with
                       counter-based masks (a 32-bit hash of each entry's position and a per-step
                       seed) recomputed inside three ``torch.compile`` kernels: no
                       ``[B, d, d]`` mask is built or kept; 4.7x faster than stored masks at
                       d = 300 (``benchmarks/bench_hidden_dropout.py``,
                       ``benchmarks/results/hidden-dropout-cpu.json``); also the element-wise
                       ``dropout`` (4 masks per 64-bit random word)
``fused``              ``run_compiled`` / ``fused_or_eager``: small element-wise functions (the
                       fusion's input dropout, its projection gradient, CLUB's terms) as one
                       Inductor kernel each, with an eager fallback of equal values
                       (``MOMOK_PYG_COMPILE=0`` or a failed compilation)
``fusion``             :class:`~momok_pyg.nn.mujod.ModalityFusion`'s input dropout, projections,
                       attention and weighted sum as one autograd function whose backward
                       recomputes the dropped inputs and finishes one modality before the next
                       (peak memory and time, ``benchmarks/results/cpu-2core.json``)
``grad_buffers``       the Tucker cores' gradients (:math:`d^3` floats each) written into one
                       buffer that :class:`~momok_pyg.training.optim.BackwardAdam` gives back
                       after each update, so steps reuse pages instead of faulting in new ones
                       (peak RSS and page faults, ``benchmarks/results/cpu-2core.json``)
``scratch``            the largest temporaries remade every step (dropped fusion inputs, backward
                       products, transposed relation matrices) in buffers reused from step to
                       step, released at the end of each epoch (same benchmark)
=====================  ==========================================================================
"""
from . import fused, fusion, grad_buffers, grouped, scratch, tucker_dropout

__all__ = ["fused", "fusion", "grad_buffers", "grouped", "scratch", "tucker_dropout"]
