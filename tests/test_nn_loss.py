"""Tests of the 1-N training losses and the inference aggregation of MuJoD (Eq. 5-6)."""
import pytest
import torch
import torch.nn.functional as F

from momok_pyg.nn import MuJoD

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ 1-N loss --
@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_sparse_one_to_n_loss_equals_dense_definition(kind, eps, layout):
    from momok_pyg.nn import one_to_n_loss
    torch.manual_seed(0)
    B, N = 9, 23
    score = (3 * torch.randn(B, N)).requires_grad_()
    y = (torch.rand(B, N) < 0.15).float()
    y[0] = 0  # a query without answers
    y[1, :4] = 1
    if layout == "dense":
        target = y
    elif layout == "coo":
        target = y.to_sparse()
    else:
        target = y.to_sparse_csr()
    if kind == "ce":  # the definition: F.cross_entropy against the normalised target
        ref = F.cross_entropy(score, y / y.sum(1, keepdim=True).clamp_min(1.0),
                              label_smoothing=eps)
    else:
        ref = F.binary_cross_entropy_with_logits(score, (1 - eps) * y + 1.0 / N)
    out = one_to_n_loss(score, target, kind, eps)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g_out, = torch.autograd.grad(3.0 * out, score)
    g_ref, = torch.autograd.grad(3.0 * ref, score)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_linear_one_to_n_loss_equals_loss_of_the_product(kind, eps):
    # the fused scores + loss + gradient products (CE: one exponential pass over a buffer the
    # loss owns, or over a caller's scratch shared by two calls) == the loss of q @ c^T
    from momok_pyg.nn.loss import linear_one_to_n_loss, one_to_n_loss
    torch.manual_seed(0)
    B, N, d = 9, 23, 5
    y = (torch.rand(B, N) < 0.15).float()
    y[0] = 0  # a query without answers
    y[1, :4] = 1
    y[2, 5] = 2.0  # a weighted answer
    qs = [(2 * torch.randn(B, d)).requires_grad_() for _ in range(2)]
    cs = [torch.randn(N, d, requires_grad=True) for _ in range(2)]
    ref = sum(one_to_n_loss(q @ c.t(), y.to_sparse(), kind, eps) for q, c in zip(qs, cs))
    g_ref = torch.autograd.grad(3.0 * ref, qs + cs)
    for scratch in (None, torch.full((B, N), float("nan"))):
        got = sum(linear_one_to_n_loss(q, c, y.to_sparse(), kind, eps, out=scratch)
                  for q, c in zip(qs, cs))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(3.0 * got, qs + cs), g_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the saved gradients are scaled in place: a second backward through the node raises
    # rather than scaling them twice
    got = linear_one_to_n_loss(qs[0], cs[0], y.to_sparse(), kind, eps)
    torch.autograd.grad(3.0 * got, qs[:1] + cs[:1], retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        torch.autograd.grad(3.0 * got, qs[:1] + cs[:1])
    for bad in (torch.empty(B, N - 1), torch.empty(B, N, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"out must be a float32 tensor of shape \(9, 23\)"):
            linear_one_to_n_loss(qs[0], cs[0], y, kind, eps, out=bad)


def test_one_to_n_loss_rejects_bad_input():
    from momok_pyg.nn import one_to_n_loss
    s = torch.randn(3, 5)
    with pytest.raises(ValueError, match="shape"):
        one_to_n_loss(s, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="loss must be"):
        one_to_n_loss(s, torch.zeros(3, 5), "mse")
    with pytest.raises(ValueError, match="label_smoothing"):
        one_to_n_loss(s, torch.zeros(3, 5), "ce", 1.0)


# --------------------------------------------------------------------------------- losses --
def test_losses_and_aggregation_follow_their_formulas():
    torch.manual_seed(0)
    s = {"a": torch.randn(4, 9), "b": torch.randn(4, 9)}
    y = torch.zeros(4, 9)
    y[0, [1, 2]] = 1
    y[1, 3] = y[2, 4] = y[3, 0] = 1
    ce = MuJoD({"a": 3, "b": 3}, 4, 3, 3, joint=False, loss="ce")
    ref = sum(-(torch.log_softmax(v, -1) * y / y.sum(-1, keepdim=True)).sum(-1).mean()
              for v in s.values())
    torch.testing.assert_close(ce.loss(s, y), ref)
    bce = MuJoD({"a": 3, "b": 3}, 4, 3, 3, joint=False, loss="bce")
    assert bce.label_smoothing == pytest.approx(0.1)  # official default for BCE
    t = 0.9 * y + 1.0 / 9
    ref = sum(-(t * F.logsigmoid(v) + (1 - t) * F.logsigmoid(-v)).mean() for v in s.values())
    torch.testing.assert_close(bce.loss(s, y), ref)
    torch.testing.assert_close(ce.aggregate(s), s["a"] + s["b"])
    official = MuJoD({"a": 3}, 4, 3, 3, joint=False, aggregate="mean_sigmoid")
    torch.testing.assert_close(official.aggregate(s, ["a", "b"]),
                               (torch.sigmoid(s["a"]) + torch.sigmoid(s["b"])) / 2)
    with pytest.raises(KeyError, match="joint"):
        ce.aggregate(s, ["joint"])


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_ce_gradient_has_no_subnormal_floats(eps):
    # a trained model separates its scores by more than 87 (= -log of the smallest normal
    # float): softmax / B of the far-below candidates underflows into subnormals, which x86
    # CPUs multiply many times slower in the gradient products; the loss flushes them to zero
    from momok_pyg.nn import one_to_n_loss
    from momok_pyg.nn.loss import _ce_loss_and_grad_, sparse_rows
    torch.manual_seed(0)
    B, N = 6, 400
    score = torch.linspace(0.0, -110.0, N).repeat(B, 1) + 0.1 * torch.randn(B, N)
    y = torch.zeros(B, N)
    y[:, 0] = 1
    y[2, 3] = 1
    tiny = torch.finfo(torch.float32).tiny

    def subnormal(g):
        return int(((g.abs() < tiny) & (g != 0)).sum())
    # the reference gradient (autograd through F.cross_entropy) does carry subnormals here
    s = score.clone().requires_grad_()
    ref = F.cross_entropy(s, y / y.sum(1, keepdim=True), label_smoothing=eps)
    g_ref, = torch.autograd.grad(ref, s)
    softmax_part = torch.softmax(score, 1) / B
    assert subnormal(softmax_part) > 0
    s = score.clone().requires_grad_()
    g_unfused, = torch.autograd.grad(one_to_n_loss(s, y.to_sparse(), "ce", eps), s)
    row, col, value = sparse_rows(y.to_sparse())
    loss, g_fused = _ce_loss_and_grad_(score.clone(), row, col, value, eps)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g in (g_unfused, g_fused):
        assert subnormal(g) == 0
        # equal to the reference up to the flushed values (each below the smallest normal;
        # rtol 1e-4: with eps > 0 a few entries are softmax - eps / (N B), a cancellation)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=2 * tiny)
        # every entry whose softmax part is normal is untouched (no flush beyond subnormals)
        keep = softmax_part >= tiny
        torch.testing.assert_close(g[keep], g_ref[keep], rtol=1e-4, atol=0.0)
