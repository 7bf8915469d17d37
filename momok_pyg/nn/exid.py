r"""Expert information disentanglement, ExID (paper Eq. 7-9): CLUB mutual-information
upper bounds between the experts of every modality."""
from __future__ import annotations

import itertools
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch.func import functional_call
from torch.nn import Linear, ModuleDict, ReLU, Sequential, Tanh

from .kernels.fused import fused_or_eager

PAIRS = ("all", "random")


def _club_gap(mu: Tensor, raw_logvar: Tensor, y: Tensor, y_neg: Optional[Tensor]) -> Tensor:
    # mean_b [log q(y_b | x_b) - log-likelihood of the negatives] from mu and the log-variance
    # before its tanh; negatives: y_neg (sampled) or the closed-form mean over the batch
    inv_var = torch.exp(-torch.tanh(raw_logvar))
    positive = ((mu - y) ** 2 * inv_var).sum(-1)
    if y_neg is None:
        negative = ((mu * mu - 2 * mu * y.mean(0) + (y * y).mean(0)) * inv_var).sum(-1)
    else:
        negative = ((mu - y_neg) ** 2 * inv_var).sum(-1)
    return 0.5 * (negative - positive).mean()


def _gaussian_nll(mu: Tensor, raw_logvar: Tensor, y: Tensor) -> Tensor:
    # mean_b -log q(y_b | x_b) + const, the log-variance given before its tanh
    logvar = torch.tanh(raw_logvar)
    return 0.5 * ((mu - y) ** 2 * torch.exp(-logvar) + logvar).sum(-1).mean()


class CLUB(torch.nn.Module):
    r"""The Contrastive Log-ratio Upper Bound of mutual information (Cheng et al., 2020) with
    a diagonal-Gaussian variational network
    :math:`q_\theta(\mathbf{y} \mid \mathbf{x}) = \mathcal{N}(\boldsymbol{\mu}(\mathbf{x}),
    \operatorname{diag}\exp \mathbf{l}(\mathbf{x}))`, where :math:`\boldsymbol{\mu}` and
    :math:`\mathbf{l}` are two-layer MLPs (``Linear-ReLU-Linear``; the log-variance ends in
    ``tanh`` as in the official ``CLUBSample``):

    .. math::
        \hat{I}_{\mathrm{CLUB}}(\mathbf{x}; \mathbf{y}) = \frac{1}{B} \sum_{b=1}^{B}
        \Big[\log q_\theta(\mathbf{y}_b \mid \mathbf{x}_b) - \frac{1}{B} \sum_{b'=1}^{B}
        \log q_\theta(\mathbf{y}_{b'} \mid \mathbf{x}_b)\Big].

    The all-pairs negative term is evaluated in closed form,
    :math:`\frac{1}{B}\sum_{b'} (\mu_{bd} - y_{b'd})^2 = \mu_{bd}^2 - 2 \mu_{bd} \bar{y}_d +
    \overline{y^2}_d`, so the exact estimator costs :math:`O(B d)` like the sampled one
    (``sample=True``: one random permutation as negatives, the official ``CLUBSample``).

    :math:`q_\theta` is fitted by maximising :math:`\log q_\theta(\mathbf{y}_b \mid
    \mathbf{x}_b)` (:meth:`learning_loss`, the Gaussian negative log-likelihood *including*
    the :math:`\frac{1}{2}\mathbf{l}` term; the official ``loglikeli`` omits it, which
    drives the variance to its upper clamp).

    Args:
        x_dim, y_dim (int): Sizes of :math:`\mathbf{x}` and :math:`\mathbf{y}`.
        hidden (int, optional): Hidden width (default ``x_dim // 2``, as official).
        sample (bool): Sampled (permutation) negatives instead of the exact mean.
    """
    def __init__(self, x_dim: int, y_dim: int, hidden: Optional[int] = None,
                 sample: bool = False):
        super().__init__()
        hidden = hidden or max(1, x_dim // 2)
        self.x_dim, self.y_dim, self.hidden, self.sample = x_dim, y_dim, hidden, sample
        self.mu = Sequential(Linear(x_dim, hidden), ReLU(), Linear(hidden, y_dim))
        self.logvar = Sequential(Linear(x_dim, hidden), ReLU(), Linear(hidden, y_dim), Tanh())

    def reset_parameters(self) -> None:
        for net in (self.mu, self.logvar):
            for layer in net:
                if isinstance(layer, Linear):
                    layer.reset_parameters()

    def mu_logvar(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.mu(x), self.logvar(x)

    def _mu_raw_logvar(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        # the log-variance before its final tanh (applied inside the fused CLUB terms)
        return self.mu(x), self.logvar[:-1](x)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        r"""The CLUB estimate :math:`\hat{I}(\mathbf{x}; \mathbf{y})` (scalar) for paired
        samples ``x`` ``[B, x_dim]`` and ``y`` ``[B, y_dim]``. The element-wise terms run as one
        fused kernel (:mod:`momok_pyg.nn.kernels.fused`)."""
        x, y = x.float(), y.float()
        mu, raw_logvar = self._mu_raw_logvar(x)
        y_neg = y[torch.randperm(y.size(0), device=y.device)] if self.sample else None
        return fused_or_eager(_club_gap, mu, raw_logvar, y, y_neg)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Mean :math:`\log q_\theta(\mathbf{y}_b \mid \mathbf{x}_b)` up to the constant
        :math:`-\frac{d}{2}\log 2\pi`."""
        return -self.learning_loss(x, y)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Negative log-likelihood to minimise w.r.t. :math:`\theta`."""
        mu, raw_logvar = self._mu_raw_logvar(x.float())
        return fused_or_eager(_gaussian_nll, mu, raw_logvar, y.float())

    def extra_repr(self) -> str:
        return (f"{self.x_dim}, {self.y_dim}, hidden={self.hidden}, "
                f"sample={self.sample}")


class ExID(torch.nn.Module):
    r"""Expert Information Disentanglement (paper Eq. 7-9).

    For every modality :math:`m` with experts :math:`\mathbf{V}_{m,1..K}`, the mutual
    information between experts is bounded from above with :class:`CLUB` and minimised by the
    KGC model:

    .. math::
        \mathcal{L}_{club} = \frac{1}{|\mathcal{M}|} \sum_{m} \frac{1}{|\mathcal{P}|}
        \sum_{(i, j) \in \mathcal{P}} \hat{I}_{\mathrm{CLUB}}(\mathbf{V}_{m,i};
        \mathbf{V}_{m,j}), \qquad
        \mathcal{L} = \mathcal{L}_{kgc} + \lambda\, \mathcal{L}_{club}

    (:math:`\lambda = 10^{-4}` by default; applied by the trainer). The variational networks
    :math:`Q_{\theta,m}` are trained alternately on their own log-likelihood
    (:meth:`learning_loss`) with their own optimizer, on *detached* expert outputs.

    Pairs :math:`\mathcal{P}`: ``pairs="all"`` (default) uses every unordered pair
    :math:`i < j`; ``pairs="random"`` draws one ordered pair per call (official).
    ``shared=True`` (default) uses one :math:`Q_{\theta,m}` per modality for all its pairs,
    as the paper writes it and as the official code does; ``shared=False`` gives every pair
    its own estimator. The
    official ``MIEstimator`` indexes its pair on the *batch* axis (``strs[idx1]`` of a
    ``[B, K, d]`` tensor picks two samples, not two experts); that bug is not reproduced:
    here pairs are always pairs of experts across the batch.

    :meth:`upper_bound` evaluates :math:`Q_\theta` with detached parameters, so its gradient
    reaches only the expert views (the trainer never has to zero :math:`Q_\theta` grads
    produced by the KGC step).

    Args:
        dims (Mapping[str, int]): View size of every modality with experts.
        num_experts (int): :math:`K \ge 2`.
        hidden (int, optional): Hidden width of :math:`Q_\theta` (default ``d // 2``).
        pairs (str): ``"all"`` or ``"random"``.
        shared (bool): One estimator per modality instead of one per pair.
        sample (bool): Sampled CLUB negatives (official) instead of the exact mean.
    """
    def __init__(self, dims: Mapping[str, int], num_experts: int, hidden: Optional[int] = None,
                 pairs: str = "all", shared: bool = True, sample: bool = False):
        super().__init__()
        if num_experts < 2:
            raise ValueError(f"ExID needs at least 2 experts, got {num_experts}")
        if pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
        if len(dims) == 0:
            raise ValueError("ExID needs at least one modality")
        self.dims = dict(dims)
        self.num_experts = num_experts
        self.pairs = pairs
        self.shared = shared
        self.pair_list: List[Tuple[int, int]] = list(itertools.combinations(
            range(num_experts), 2))
        keys = ["shared"] if shared else [f"{i}_{j}" for i, j in self.pair_list]
        self.estimators = ModuleDict({
            m: ModuleDict({k: CLUB(d, d, hidden, sample) for k in keys})
            for m, d in self.dims.items()
        })

    def reset_parameters(self) -> None:
        for per_modality in self.estimators.values():
            for club in per_modality.values():
                club.reset_parameters()

    def _estimator(self, m: str, i: int, j: int) -> CLUB:
        return self.estimators[m]["shared" if self.shared else f"{min(i, j)}_{max(i, j)}"]

    def _pairs(self) -> List[Tuple[int, int]]:
        if self.pairs == "all":
            return self.pair_list
        i, j = torch.randperm(self.num_experts)[:2].tolist()
        return [(i, j) if self.shared else (min(i, j), max(i, j))]

    def _check(self, views: Mapping[str, Tensor]) -> None:
        for m in self.dims:
            if m not in views:
                raise KeyError(f"ExID: no views for modality {m!r}; got {list(views)}")
            v = views[m]
            if v.dim() != 3 or v.size(1) != self.num_experts or v.size(2) != self.dims[m]:
                raise ValueError(f"ExID: views[{m!r}] must be [B, {self.num_experts}, "
                                 f"{self.dims[m]}], got {tuple(v.shape)}")

    def upper_bound(self, views: Mapping[str, Tensor]) -> Tensor:
        r""":math:`\mathcal{L}_{club}` (scalar) from ``{m: [B, K, d]}`` expert views; gradients
        flow to the views only."""
        self._check(views)
        pairs = self._pairs()
        total = []
        for m in self.dims:
            v = views[m].unbind(1)  # one gradient buffer for all experts (not one per use)
            per_pair = []
            for i, j in pairs:
                club = self._estimator(m, i, j)
                params = {k: p.detach() for k, p in club.named_parameters()}
                per_pair.append(functional_call(club, params, (v[i], v[j])))
            total.append(torch.stack(per_pair).mean())
        return torch.stack(total).mean()

    def learning_loss(self, views: Mapping[str, Tensor]) -> Tensor:
        r"""Negative log-likelihood of the :math:`Q_\theta` networks on ``{m: [B, K, d]}``
        (views are detached here; minimise with ExID's own optimizer)."""
        self._check(views)
        pairs = self._pairs()
        total = []
        for m in self.dims:
            v = views[m].detach().unbind(1)
            total.append(torch.stack([
                self._estimator(m, i, j).learning_loss(v[i], v[j]) for i, j in pairs
            ]).mean())
        return torch.stack(total).mean()

    def pairwise(self, views: Mapping[str, Tensor]) -> Dict[str, Dict[Tuple[int, int], float]]:
        r"""Diagnostic: the CLUB estimate of every modality and every pair, as floats."""
        self._check(views)
        with torch.no_grad():
            return {m: {(i, j): float(self._estimator(m, i, j)(views[m][:, i], views[m][:, j]))
                        for i, j in self.pair_list} for m in self.dims}
