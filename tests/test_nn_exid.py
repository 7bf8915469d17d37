"""Tests of ExID: the CLUB mutual-information upper bound between experts (paper Eq. 7-9)
and its variational networks."""
import pytest
import torch

from momok_pyg.nn import CLUB, ExID

pytestmark = pytest.mark.usefixtures("single_thread")


def _fit_club(x_fn, steps=150):
    torch.manual_seed(0)
    club = CLUB(8, 8, hidden=32)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = x_fn(256)
        opt.zero_grad()
        club.learning_loss(x, y).backward()
        opt.step()
    x, y = x_fn(2048)
    with torch.no_grad():
        return float(club(x, y))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("sample", [False, True])
def test_club_fused_terms_equal_the_textbook_estimator(monkeypatch, sample, compiled):
    """CLUB's fused element-wise terms (and their eager run) against the estimator written
    from its definition over all [B, B] pairs: value and gradients, and the NLL."""
    if not compiled:
        monkeypatch.setenv("MOMOK_PYG_COMPILE", "0")
    torch.manual_seed(0)
    b = 32
    club = CLUB(6, 5, hidden=4, sample=sample)
    x, y = torch.randn(b, 6, requires_grad=True), torch.randn(b, 5, requires_grad=True)

    def textbook():
        mu, logvar = club.mu_logvar(x)
        ll = -0.5 * ((mu.unsqueeze(1) - y.unsqueeze(0)) ** 2
                     / logvar.exp().unsqueeze(1)).sum(-1)  # ll[i, j] = log q(y_j | x_i) + c
        neg = ll[torch.arange(b), torch.randperm(b)] if sample else ll.mean(1)
        return (ll.diagonal() - neg).mean()

    def nll():
        mu, logvar = club.mu_logvar(x)
        return 0.5 * ((mu - y) ** 2 / logvar.exp() + logvar).sum(-1).mean()

    inputs = [x, y] + list(club.parameters())
    for ours, ref in ((club, textbook), (club.learning_loss, nll)):
        torch.manual_seed(3)  # the same negatives
        a = ours(x, y)
        torch.manual_seed(3)
        r = ref()
        torch.testing.assert_close(a, r)
        for ga, gr in zip(torch.autograd.grad(a, inputs), torch.autograd.grad(r, inputs)):
            torch.testing.assert_close(ga, gr)


def test_club_near_zero_for_independent_and_positive_for_dependent():
    independent = _fit_club(lambda n: (torch.randn(n, 8), torch.randn(n, 8)))

    def dependent(n):
        x = torch.randn(n, 8)
        return x, x + 0.1 * torch.randn(n, 8)

    dep = _fit_club(dependent)
    assert abs(independent) < 0.2, independent
    assert dep > 3.0, dep


def test_club_sampled_estimator_agrees_in_expectation():
    torch.manual_seed(0)
    club = CLUB(4, 4)
    x = torch.randn(4096, 4)
    y = x + 0.3 * torch.randn(4096, 4)
    exact = float(club(x, y).detach())
    club.sample = True
    sampled = sum(float(club(x, y)) for _ in range(20)) / 20
    assert sampled == pytest.approx(exact, rel=0.05, abs=0.05)


def test_exid_gradients_go_to_views_or_estimators_only():
    torch.manual_seed(0)
    # the paper's default: one Q_theta,m per modality for all its expert pairs
    assert len(ExID({"a": 6, "b": 4}, num_experts=3).estimators["a"]) == 1
    exid = ExID({"a": 6, "b": 4}, num_experts=3, shared=False)
    assert len(exid.estimators["a"]) == 3  # one Q per unordered expert pair
    views = {"a": torch.randn(32, 3, 6, requires_grad=True),
             "b": torch.randn(32, 3, 4, requires_grad=True)}
    exid.upper_bound(views).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views.values())
    assert all(p.grad is None for p in exid.parameters())
    views = {m: v.detach().requires_grad_() for m, v in views.items()}
    exid.learning_loss(views).backward()
    assert all(v.grad is None for v in views.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in exid.parameters())
    official = ExID({"a": 6}, num_experts=3, pairs="random", shared=True)
    assert len(official.estimators["a"]) == 1
    assert torch.isfinite(official.upper_bound({"a": views["a"]}))
    with pytest.raises(ValueError, match=r"\[B, 3, 6\]"):
        exid.upper_bound({"a": torch.randn(5, 2, 6), "b": views["b"]})
