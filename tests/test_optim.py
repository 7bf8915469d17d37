import copy

import pytest
import torch

from momok_pyg.training import BackwardAdam


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _loss(net, x):
    # the first layer's weight is used twice: its hook must wait for both contributions
    w = net[0].weight
    return (net(x) ** 2).mean() + (w * w).sum() * 1e-2


def test_backward_adam_matches_adam_and_frees_gradients():
    a, b = _net(), _net()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, weight_decay=1e-3)
    opt = BackwardAdam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.randn(16, 6, generator=gen)
        ref.zero_grad()
        _loss(a, x).backward()
        ref.step()
        opt.zero_grad()
        _loss(b, x).backward()  # updates happen here
        assert all(p.grad is None for p in b.parameters())
        opt.step()  # no-op
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=0, atol=1e-7)
    # checkpoints are interchangeable with torch.optim.Adam's
    sd = opt.state_dict()
    ref_sd = ref.state_dict()
    assert sd["param_groups"][0]["params"] == ref_sd["param_groups"][0]["params"]
    for i, st in ref_sd["state"].items():
        torch.testing.assert_close(sd["state"][i]["exp_avg_sq"], st["exp_avg_sq"])
    c = copy.deepcopy(b)
    opt2 = BackwardAdam(c.parameters(), lr=1e-2, weight_decay=1e-3)
    opt2.load_state_dict(ref_sd)
    ref3 = torch.optim.Adam(a.parameters(), lr=1e-2, weight_decay=1e-3)
    ref3.load_state_dict(opt.state_dict())
    x = torch.randn(16, 6, generator=gen)
    _loss(c, x).backward()
    ref3.zero_grad()
    _loss(a, x).backward()
    ref3.step()
    for pa, pc in zip(a.parameters(), c.parameters()):
        torch.testing.assert_close(pc, pa, rtol=0, atol=1e-7)
    opt2.remove_hooks()
    _loss(c, x).backward()
    assert all(p.grad is not None for p in c.parameters())
    with pytest.raises(ValueError, match="expected one group of 4"):
        opt2.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})
