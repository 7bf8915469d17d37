r"""Adam stepped inside the backward pass, to keep at most one gradient alive."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List

import torch
from torch import Tensor

from momok_pyg.nn.kernels import grad_buffers


class BackwardAdam:
    r"""Adam (:class:`torch.optim.Adam`, fused where possible) that updates every parameter
    *during* ``loss.backward()``, as soon as that parameter's gradient is complete
    (:meth:`torch.Tensor.register_post_accumulate_grad_hook`), and drops the gradient right
    after. The updates are those of one :class:`torch.optim.Adam` over all parameters (Adam
    is element-wise; there is no gradient clipping), but the gradients of the whole model
    never coexist: for MoMoK at :math:`d = 300` they would hold four Tucker cores of
    :math:`d^3` floats each (≈ 430 MB) at the end of every backward pass.

    The gradient it drops goes to :func:`momok_pyg.nn.kernels.grad_buffers.give_back`: a
    backward pass that writes a gradient of that shape into a borrowed buffer (the Tucker
    cores') reuses its memory next time instead of faulting in fresh pages. A reference to
    ``param.grad`` kept by another hook therefore sees it overwritten by the next backward pass.

    A parameter's hook fires once its gradient is fully accumulated, i.e. after every
    operation that used it has run its backward, so no saved tensor is modified while still
    needed. :meth:`step` does nothing (the updates already happened);
    :meth:`state_dict` / :meth:`load_state_dict` use :class:`torch.optim.Adam`'s format
    (one parameter group, states indexed by parameter position), so checkpoints move
    freely between the two.

    Args:
        params (Iterable[Tensor]): Parameters to optimise.
        lr (float), weight_decay (float), fused (bool): As :class:`torch.optim.Adam`.
    """
    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, weight_decay: float = 0.0,
                 fused: bool = False):
        self.params: List[Tensor] = [p for p in params if p.requires_grad]
        if len(self.params) == 0:
            raise ValueError("BackwardAdam got no parameter that requires grad")
        self.optimizers = [torch.optim.Adam([p], lr=lr, weight_decay=weight_decay,
                                            fused=fused) for p in self.params]
        self._handles = [p.register_post_accumulate_grad_hook(self._make_hook(opt))
                         for p, opt in zip(self.params, self.optimizers)]

    @staticmethod
    def _make_hook(opt: torch.optim.Optimizer):
        def hook(param: Tensor) -> None:
            opt.step()
            grad_buffers.give_back(param.grad)  # reused if a backward pass asks for it
            param.grad = None
        return hook

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        r"""One group per parameter (change ``lr`` on all of them to change it)."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        r"""No-op: every parameter was updated inside ``backward()``."""

    def remove_hooks(self) -> None:
        r"""Detaches the optimizer from the parameters (later backward passes only
        accumulate gradients again)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> Dict[str, Any]:
        r""":class:`torch.optim.Adam`'s ``state_dict`` format for all parameters."""
        state, group = {}, None
        for i, opt in enumerate(self.optimizers):
            sd = opt.state_dict()
            if 0 in sd["state"]:
                state[i] = sd["state"][0]
            if group is None:
                group = dict(sd["param_groups"][0])
        group["params"] = list(range(len(self.params)))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        n = sum(len(g["params"]) for g in groups)
        if len(groups) != 1 or n != len(self.params):
            raise ValueError(f"optimizer state for {n} parameters in {len(groups)} groups; "
                             f"expected one group of {len(self.params)} parameters")
        group = {k: v for k, v in groups[0].items() if k != "params"}
        for i, opt in enumerate(self.optimizers):
            sub = {"state": ({0: state_dict["state"][i]} if i in state_dict["state"] else {}),
                   "param_groups": [dict(group, params=[0])]}
            opt.load_state_dict(sub)


__all__ = ["BackwardAdam"]
