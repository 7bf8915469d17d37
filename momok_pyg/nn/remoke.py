r"""Relation-guided modality knowledge experts, ReMoKE (paper Eq. 2)."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Parameter

from .kernels.fused import fused_or_eager
from .kernels.tucker_dropout import dropout as inverted_dropout

GATE_INPUTS = ("views", "raw")


#: the input gradient's product gets an output width that is a multiple of this
_GRAD_WIDTH = 16


def _pads_input_grad(x: Tensor, weight: Tensor) -> bool:
    # float32 CPU only, and only when x needs a gradient of a width off the multiple
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
            and x.requires_grad and x.size(1) % _GRAD_WIDTH != 0)


class _InputGradPaddedAddmm(torch.autograd.Function):
    r""":math:`\mathbf{b} + \mathbf{X}\mathbf{W}`, ``torch.addmm``, whose input gradient
    :math:`\mathbf{G}\mathbf{W}^\top` ``[n, d_in]`` is computed ``d_in`` rounded up to a
    multiple of 16 wide (zero rows appended to :math:`\mathbf{W}`) and sliced back. On
    2 cores (MKL, ``[15000, 900] x [900, d_in]``) ``d_in`` = 300 and 383 run at 111 and 103
    GFLOP/s, 304 and 384 at 164 and 175: the expert input gradients of the structure
    (300-d) and image (383-d) modalities take 50 and 59 ms instead of 73 and 100."""

    @staticmethod
    def forward(ctx: Any, bias: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_bias = grad.sum(0) if ctx.needs_input_grad[0] else None
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            pad = -weight.size(0) % _GRAD_WIDTH
            grad_x = grad.mm(F.pad(weight, (0, 0, 0, pad)).t())[:, :weight.size(0)]
        if ctx.needs_input_grad[2]:
            grad_weight = x.t().mm(grad)
        return grad_bias, grad_x, grad_weight


class ReMoKEOutput(NamedTuple):
    out: Tensor  #: ``[n, d]`` gated mixture :math:`\sum_i G_i \mathbf{V}_i`
    views: Tensor  #: ``[n, K, d]`` expert views :math:`\mathbf{V}_{1..K}`
    gates: Tensor  #: ``[n, K]`` gate weights (rows sum to one)


class RelationTemperature(torch.nn.Module):
    r"""Learned per-relation gate temperature :math:`\sigma(\epsilon_r) \in (0, 1)`.

    One scalar :math:`\epsilon_r` per relation *including* the reciprocal ones (``2R`` rows),
    initialised :math:`\mathcal{N}(0, 1)` as the official ``rel_gate`` embedding. MoMoK shares
    one table across all modalities' :class:`ReMoKE` (as the official code does).
    """
    def __init__(self, num_relations: int):
        super().__init__()
        self.eps = Embedding(num_relations, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.eps.reset_parameters()

    def forward(self, rel: Tensor) -> Tensor:
        r"""Returns :math:`\sigma(\epsilon_r)` of shape ``[B]``."""
        return torch.sigmoid(self.eps(rel).squeeze(-1))


def _gate_mix_kernel(views: Tensor, w: Tensor, noise: Optional[Tensor], noise_eps: float
                     ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    r"""Relation-free gate and mixture of ``views`` ``[n, K, d]`` with the gate scorers
    ``w`` ``[d, 1]`` (:math:`U_m`) or ``[d, 2]`` (:math:`U_m, U'_m`, with standard-normal
    ``noise`` ``[n, K]``): ``(mixture [n, d], logits [n, K], gates [n, K], noise-scale
    pre-activation [n, K] or None)``; logits and gates in float32."""
    out = (views.unsqueeze(-1).float() * w.float()).sum(-2)  # [n, K, 1 or 2]
    logits, raw = out[..., 0], None
    if noise is not None:
        raw = out[..., 1]
        logits = logits + noise.float() * (F.softplus(raw) + noise_eps)
    gates = torch.softmax(logits, dim=-1)
    mixed = (gates.unsqueeze(-1) * views.float()).sum(1).to(views.dtype)
    return mixed, logits, gates, raw


def _gate_mix_grad_kernel(views: Tensor, w: Tensor, noise: Optional[Tensor], gates: Tensor,
                          raw: Optional[Tensor], grad_mixed: Tensor, grad_logits: Tensor
                          ) -> Tuple[Tensor, Tensor]:
    r"""Gradients of :func:`_gate_mix_kernel`: ``(grad views [n, K, d], grad of the
    logits' pre-activations [n, K, 1 or 2])``."""
    gm = grad_mixed.float().unsqueeze(1)
    v = views.float()
    gg = (v * gm).sum(-1)  # d loss / d gates
    gl = gates * (gg - (gates * gg).sum(-1, keepdim=True)) + grad_logits.float()
    if noise is not None:
        gpre = torch.stack([gl, gl * noise.float() * torch.sigmoid(raw)], dim=-1)
    else:
        gpre = gl.unsqueeze(-1)
    grad_views = gates.unsqueeze(-1) * gm + (gpre.unsqueeze(-2) * w.float()).sum(-1)
    return grad_views.to(views.dtype), gpre


class _GateMix(torch.autograd.Function):
    r"""The relation-free gate and mixture of all rows as two fused kernels (forward,
    backward), each one pass over the ``[n, K, d]`` views: unfused, the gate scorers'
    products with one or two output columns and the batched mixture each read the views,
    and the backward writes three ``[n, K, d]`` gradients and adds them."""
    @staticmethod
    def forward(ctx: Any, views: Tensor, w: Tensor, noise: Optional[Tensor],
                noise_eps: float) -> Tuple[Tensor, Tensor]:
        mixed, logits, gates, raw = fused_or_eager(_gate_mix_kernel, views, w.detach(),
                                                   noise, noise_eps)
        ctx.save_for_backward(views, w, noise, gates, raw)
        return mixed, logits

    @staticmethod
    def backward(ctx: Any, grad_mixed: Tensor, grad_logits: Tensor):
        views, w, noise, gates, raw = ctx.saved_tensors
        if grad_mixed is None:
            grad_mixed = views.new_zeros(views.size(0), views.size(2))
        if grad_logits is None:
            grad_logits = gates.new_zeros(gates.shape)
        grad_views, gpre = fused_or_eager(_gate_mix_grad_kernel, views, w, noise, gates, raw,
                                          grad_mixed, grad_logits)
        n, k, d = views.shape
        # [c, nK] x [nK, d]: the row-major product (the transposed [nK, d]^T x [nK, c] one
        # is several times slower for c <= 2)
        grad_w = (gpre.reshape(n * k, -1).t().to(views.dtype) @ views.reshape(n * k, d))
        return grad_views, grad_w.t().to(w.dtype), None, None


class ReMoKE(torch.nn.Module):
    r"""Relation-guided Modality Knowledge Experts of one modality :math:`m`
    (paper Eq. 2).

    :math:`K` experts turn the raw modality embedding :math:`\mathbf{e}_m` into :math:`K`
    views; each expert is the official "parametric whitening" layer, a bias-free linear map
    of the shifted input (no activation):

    .. math::
        \mathbf{V}_i = \mathbf{W}_i \left(\mathrm{drop}(\mathbf{e}_m) - \mathbf{b}_i\right),
        \qquad i = 1, \dots, K.

    A relation-aware gate mixes the views into the relation-specific modality embedding

    .. math::
        \mathbf{e}_m^{(r)} = \sum_{i=1}^{K} G_i \mathbf{V}_i, \qquad
        G_i = \operatorname{softmax}_i\!\left(\frac{U_m(\mathbf{V}_i) + \delta_i}
        {\sigma(\epsilon_r)}\right), \qquad
        \delta_i \sim \mathcal{N}\!\left(0, \left(\mathrm{softplus}(U'_m(\mathbf{V}_i))
        + \varepsilon\right)^2\right),

    with linear scorers :math:`U_m, U'_m: \mathbb{R}^{d} \to \mathbb{R}` shared by the experts,
    the noise :math:`\delta` drawn in training only (``noise=True``), and
    :math:`\sigma(\epsilon_r)` the learned temperature of relation :math:`r`
    (:class:`RelationTemperature`; ``temperature=None`` means 1). A temperature below one
    sharpens the gate.

    ``gate_input="views"`` (default) is the paper's gate above. ``gate_input="raw"`` is the
    official code's gate: logits and noise scale are computed from the raw input,
    :math:`\mathbf{e}_m \mathbf{W}_{gate}` and :math:`\mathrm{softplus}(\mathbf{e}_m
    \mathbf{W}_{noise}) + \varepsilon` (:math:`\mathbf{W} \in \mathbb{R}^{d_{in} \times K}`).
    Gate weights start at zero in both modes (uniform gates), as in the official code.

    **Candidates.** MoMoK scores the candidate (tail) entities with the *relation-free*
    gate (temperature 1), as the official code does: a relation-specific candidate table
    would cost ``2R`` copies of ``[N, d]`` per step. Only the head (query) entity uses
    :math:`\sigma(\epsilon_r)`.

    **Cost.** All :math:`K` experts run as one matmul ``[n, d_in] x [d_in, K d]``
    (:meth:`experts`); MoMoK calls it once per step for all entities and gathers head rows.
    :meth:`candidates` gates and mixes all rows in one fused pass over the views (forward and
    backward).

    Args:
        in_channels (int): Raw modality size :math:`d_{in}`.
        out_channels (int): View size :math:`d`.
        num_experts (int): :math:`K` (paper default 3).
        noise (bool): Gaussian gate noise in training.
        gate_input (str): ``"views"`` (paper) or ``"raw"`` (official code).
        dropout (float): Input dropout of every expert (official: 0; one mask per expert).
        noise_eps (float): :math:`\varepsilon` added to the noise scale (official: 0.01).
    """
    def __init__(self, in_channels: int, out_channels: int, num_experts: int = 3,
                 noise: bool = True, gate_input: str = "views", dropout: float = 0.0,
                 noise_eps: float = 1e-2):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expert dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_experts = num_experts
        self.noise = noise
        self.gate_input = gate_input
        self.dropout = dropout
        self.noise_eps = noise_eps
        # Expert i: weight[:, i] is W_i^T, bias[i] is b_i.
        self.weight = Parameter(torch.empty(in_channels, num_experts, out_channels))
        self.bias = Parameter(torch.empty(num_experts, in_channels))
        gate_in = out_channels if gate_input == "views" else in_channels
        gate_out = 1 if gate_input == "views" else num_experts
        self.w_gate = Parameter(torch.empty(gate_in, gate_out))
        self.w_noise = Parameter(torch.empty(gate_in, gate_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.weight, std=0.02)  # official PWLayer init
        torch.nn.init.zeros_(self.bias)
        torch.nn.init.zeros_(self.w_gate)
        torch.nn.init.zeros_(self.w_noise)

    def experts(self, x: Tensor) -> Tensor:
        r"""All expert views :math:`\mathbf{V}`, ``[n, d_in] -> [n, K, d]``."""
        k, d = self.num_experts, self.out_channels
        if self.training and self.dropout > 0:
            xk = inverted_dropout(x.unsqueeze(1).expand(-1, k, -1), self.dropout)
            return torch.einsum("nki,ikd->nkd", xk - self.bias, self.weight)
        shift = torch.einsum("ki,ikd->kd", self.bias, self.weight)  # W_i b_i
        weight = self.weight.view(self.in_channels, k * d)
        if _pads_input_grad(x, weight):
            return _InputGradPaddedAddmm.apply(-shift.reshape(k * d), x, weight).view(-1, k, d)
        return torch.addmm(-shift.reshape(k * d), x, weight).view(-1, k, d)

    def gate_logits(self, x: Tensor, views: Tensor) -> Tensor:
        r"""Gate logits :math:`U_m(\mathbf{V}_i) + \delta_i` (noise in training only),
        ``[n, K]``, from the raw input ``x`` ``[n, d_in]`` and ``views`` ``[n, K, d]``."""
        noisy = self.noise and self.training
        # with noise: clean logits and noise scale in one product (one pass over the views)
        w = torch.cat([self.w_gate, self.w_noise], dim=1) if noisy else self.w_gate
        k = self.num_experts
        if self.gate_input == "views":
            out = views @ w  # [n, K, 1 or 2]
            clean, raw_std = out[..., 0], out[..., -1]
        else:
            out = x @ w  # [n, K or 2K]
            clean, raw_std = out[:, :k], out[:, -k:]
        if not noisy:
            return clean
        std = F.softplus(raw_std) + self.noise_eps
        return clean + torch.randn_like(clean) * std

    def candidates(self, x: Tensor, views: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The relation-free mixture (temperature 1) of every row and its gate logits
        (noisy in training), ``([n, d], [n, K])``: ``mix(gates(logits), views)`` with
        ``logits = gate_logits(x, views)``. For the paper's ``"views"`` gate, forward and
        backward are each one fused pass over the views (same values; the noise is drawn
        as :meth:`gate_logits` draws it)."""
        if self.gate_input != "views":
            logits = self.gate_logits(x, views)
            return self.mix(self.gates(logits), views), logits
        noisy = self.noise and self.training
        w = torch.cat([self.w_gate, self.w_noise], dim=1) if noisy else self.w_gate
        noise = (torch.randn(views.shape[:2], dtype=views.dtype, device=views.device)
                 if noisy else None)
        return _GateMix.apply(views, w, noise, self.noise_eps)

    @staticmethod
    def gates(logits: Tensor, temperature: Optional[Tensor] = None) -> Tensor:
        r"""``softmax(logits / temperature)`` over experts (in float32); ``temperature``
        ``[n]`` or :obj:`None` (= 1)."""
        logits = logits.float()
        if temperature is not None:
            logits = logits / temperature.float().unsqueeze(-1)
        return torch.softmax(logits, dim=-1)

    @staticmethod
    def mix(gates: Tensor, views: Tensor) -> Tensor:
        r""":math:`\sum_i G_i \mathbf{V}_i`, ``[n, K] x [n, K, d] -> [n, d]``."""
        # one batched [1, K] x [K, d] product per row: ~2x faster than broadcast-multiply-sum
        # (forward + backward) as no [n, K, d] temporary is built.
        return torch.bmm(gates.to(views.dtype).unsqueeze(1), views).squeeze(1)

    def forward(self, x: Tensor, temperature: Optional[Tensor] = None) -> ReMoKEOutput:
        r"""Mixes the views of ``x`` (``[n, d_in]``) under per-row temperatures
        ``temperature`` (``[n]``, e.g. :math:`\sigma(\epsilon_r)` of each row's relation)."""
        views = self.experts(x)
        gates = self.gates(self.gate_logits(x, views), temperature)
        return ReMoKEOutput(self.mix(gates, views), views, gates)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, "
                f"num_experts={self.num_experts}, gate_input={self.gate_input!r}, "
                f"noise={self.noise}")


def gate_entropy(gates: Tensor) -> Tensor:
    r"""Mean Shannon entropy (nats) of gate rows ``[n, K]``; :math:`\log K` = uniform."""
    return -(gates * torch.log(gates.clamp_min(1e-12))).sum(-1).mean()


__all__ = ["ReMoKE", "ReMoKEOutput", "RelationTemperature", "gate_entropy", "GATE_INPUTS"]
