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


@pytest.mark.parametrize("q_views", ["forward", "updated"])
def test_q_step_learns_from_the_views_its_setting_names(q_views, monkeypatch):
    # one batch, one step: "updated" hands Q the views of the heads under the parameters
    # after the model's update (official train.py), "forward" those of the step's forward
    from momok_pyg.datasets import get_triples
    from momok_pyg.datasets.synthetic import make_synthetic_mmkg
    from momok_pyg.training import TrainConfig
    from momok_pyg.training.batching import OneToNQueries, epoch_generator
    from momok_pyg.training.loop import build_model
    from momok_pyg.training.step import build_optimizers, train_epoch
    tiny = dict(num_entities=300, num_triples=600, num_groups=6, num_attributes=4)
    data = make_synthetic_mmkg(**tiny)
    config = TrainConfig(synthetic=tiny, dim=8, lr=0.05, batch_size=4096, q_views=q_views,
                         progress=False, optimizer_in_backward=False)
    model = build_model(config, data)
    queries = OneToNQueries(get_triples(data, "train"), 300, data.num_relations)
    assert queries.num_batches(4096) == 1
    opt, q_opt = build_optimizers(model, config)
    seen = {}
    real = model.exid.learning_loss

    def spy(views):
        seen.update({m: v.clone() for m, v in views.items()})
        return real(views)

    monkeypatch.setattr(model.exid, "learning_loss", spy)
    train_epoch(model, queries, opt, q_opt, config, epoch=1)
    heads = next(iter(queries.batches(4096, epoch_generator(config.seed, 1))))[0]
    after = model.head_views(heads)  # the model's parameters after its one update
    assert set(seen) == set(after) and seen
    for m in seen:
        if q_views == "updated":
            torch.testing.assert_close(seen[m], after[m])
        else:
            assert not torch.allclose(seen[m], after[m], atol=1e-6)  # pre-update views
