"""Tests of the MoMoK building blocks: TuckerScorer (Eq. 4), ReMoKE (Eq. 2) and the joint
fusion (Eq. 3); ExID / CLUB (Eq. 7-9) in test_nn_exid.py."""
import pytest
import torch

from momok_pyg.nn import (
    ModalityFusion,
    ReMoKE,
    TuckerScorer,
    draw_keep_masks,
    gate_entropy,
    gradient_noise_matmul,
    group_by_relation,
    keep_masks,
    keep_probability,
    keep_threshold,
    per_sample_dropout_matmul,
    relation_grouped_matmul,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- TuckerScorer --
@pytest.mark.parametrize("method", ["loop", "padded"])
def test_grouped_tucker_equals_per_sample_einsum(method):
    torch.manual_seed(0)
    B, d, dr, nr = 40, 7, 5, 6
    scorer = TuckerScorer(nr, d, dr, batch_norm=True, grouped=method)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for bn in (scorer.bn0, scorer.bn1):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    scorer.eval()
    head = torch.randn(B, d, requires_grad=True)
    rel = torch.tensor([0, 5, 5, 2, 2, 2] * 6 + [3, 3, 0, 5])  # 4 of 6 relations, skewed
    cand = torch.randn(11, d)
    scores = scorer(head, rel, cand)

    def bn(x, m):
        return (x - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    x = bn(head, scorer.bn0)
    r = scorer.rel_emb.weight[rel]
    q = torch.einsum("bi,ijk,bj->bk", r, scorer.core, x)  # per-sample W x_1 r x_2 e_h
    ref = bn(q, scorer.bn1) @ cand.t()
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-4)
    g1 = torch.autograd.grad(scores.sum(), (head, scorer.core))
    g2 = torch.autograd.grad(ref.sum(), (head, scorer.core))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_relation_matrices_stay_float32_under_bf16_autocast():
    """The core contraction is memory-bound: under autocast it runs in the core's dtype (no
    bf16 copy of the core, no rounding of W_r), with exact gradients for both inputs."""
    torch.manual_seed(0)
    scorer = TuckerScorer(6, 7, 5)
    rel = torch.randn(3, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mats = scorer.relation_matrices(rel)
    assert mats.dtype == torch.float32
    ref = torch.einsum("ui,ijk->ujk", rel, scorer.core)
    torch.testing.assert_close(mats, ref)
    w = torch.randn_like(ref)
    g1 = torch.autograd.grad((mats * w).sum(), (rel, scorer.core))
    g2 = torch.autograd.grad((ref * w).sum(), (rel, scorer.core))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_grouped_matmul_methods_agree():
    torch.manual_seed(0)
    x = torch.randn(50, 4)
    group = torch.randint(0, 5, (50, ))
    group[:5] = torch.arange(5)
    mats = torch.randn(5, 4, 3)
    ref = torch.einsum("bi,bij->bj", x, mats[group])
    for method in ("loop", "padded"):
        torch.testing.assert_close(relation_grouped_matmul(x, group, mats, method), ref)


def _hidden_samples(mode: str, draws: int) -> torch.Tensor:
    torch.manual_seed(0)
    d, dr = 6, 4
    scorer = TuckerScorer(3, d, dr, input_dropout=0.0, hidden_dropout=0.4,
                          output_dropout=0.0, batch_norm=False, hidden_dropout_mode=mode)
    head = torch.randn(1, d).expand(draws, d)  # one query repeated: draws of its noise
    rel = torch.full((draws, ), 1)
    scorer.train()
    with torch.no_grad():
        return scorer.query(head, rel)


def test_gaussian_hidden_dropout_matches_per_sample_masks_in_moments():
    exact, gauss = _hidden_samples("sample", 40000), _hidden_samples("gaussian", 40000)
    torch.testing.assert_close(gauss.mean(0), exact.mean(0), atol=0.03, rtol=0.0)
    ratio = gauss.var(0) / exact.var(0)
    assert exact.var(0).min() > 1e-3  # the masks do inject noise
    assert torch.all((ratio > 0.93) & (ratio < 1.07)), ratio
    # and the noise of different output entries is uncorrelated in both
    for x in (exact, gauss):
        c = torch.corrcoef(x.t())
        off = c - torch.diag(torch.diagonal(c))
        assert off.abs().max() < 0.03


def _seed_of(generator_seed: int) -> torch.Tensor:
    # the seed per_sample_dropout_matmul draws from torch.Generator().manual_seed(generator_seed)
    return torch.empty((), dtype=torch.int64).random_(
        generator=torch.Generator().manual_seed(generator_seed))


@pytest.mark.parametrize("chunk,fused", [(1, False), (3, False), (64, False), (16, True)])
def test_per_sample_dropout_matmul_equals_explicit_masks(chunk, fused):
    torch.manual_seed(0)
    B, d, e, U, p = 37, 5, 7, 4, 0.4  # d * e = 35: masks straddle the 4-lane words
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    mats = torch.randn(U, d, e, dtype=torch.float64, requires_grad=True)
    group = torch.randint(0, U, (B, ))
    group[0] = 3  # group 2 may be empty, group 3 is not
    out = per_sample_dropout_matmul(x, group, mats, p, chunk,
                                    torch.Generator().manual_seed(5), compile=fused)
    # reference: the same masks (drawn for the group-sorted rows), a [B, d, e] copy per row
    masks = keep_masks(_seed_of(5), torch.tensor(0), B, (d, e), keep_threshold(p))
    perm = torch.argsort(group, stable=True)
    row_masks = torch.empty_like(masks)
    row_masks[perm] = masks
    keep = keep_threshold(p) / 2**15
    xr, mr = x.detach().clone().requires_grad_(), mats.detach().clone().requires_grad_()
    ref = torch.einsum("bi,bij->bj", xr, mr[group] * row_masks) / keep
    torch.testing.assert_close(out, ref)
    g = torch.randn(B, e, dtype=torch.float64)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(mats.grad, mr.grad)
    assert torch.autograd.gradcheck(
        lambda a, b: per_sample_dropout_matmul(a, group, b, p, chunk,
                                               torch.Generator().manual_seed(1),
                                               compile=fused),
        (x.detach().requires_grad_(), mats.detach().requires_grad_()))


def test_fused_per_sample_dropout_stores_no_mask_and_matches_eager():
    """The compiled kernels recompute the masks: nothing of ``B * d * e`` entries is saved
    for the backward pass (the eager path keeps its boolean masks), same values."""
    torch.manual_seed(0)
    B, d, e, U, p = 64, 12, 10, 5, 0.3
    x = torch.randn(B, d)
    mats = torch.randn(U, d, e)
    group = torch.randint(0, U, (B, ))
    g = torch.randn(B, e)
    results = {}
    for fused in (True, False):
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        xx, mm = x.clone().requires_grad_(), mats.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = per_sample_dropout_matmul(xx, group, mm, p,
                                            generator=torch.Generator().manual_seed(3),
                                            compile=fused)
        out.backward(g)
        results[fused] = (out, xx.grad, mm.grad, max(saved))
    assert results[True][3] < B * d * e <= results[False][3]
    for a, b in zip(results[True][:3], results[False][:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_per_sample_dropout_falls_back_to_eager_when_compilation_fails(monkeypatch):
    import momok_pyg.nn.kernels.fused as fused

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused, "_COMPILE_FAILED", False)
    monkeypatch.setattr(torch, "compile", broken)
    x, mats = torch.randn(9, 4), torch.randn(2, 4, 3)
    group = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    with pytest.warns(UserWarning, match="no compiler here"):
        out = per_sample_dropout_matmul(x, group, mats, 0.5,
                                        generator=torch.Generator().manual_seed(2))
    assert fused._COMPILE_FAILED
    ref = per_sample_dropout_matmul(x, group, mats, 0.5, compile=False,
                                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, ref)


def test_moments_mode_gradients_match_per_sample_masks_in_mean_and_variance():
    """``hidden_dropout_mode="moments"`` adds to the gradients of the grouped product the
    noise the official masks cause: same mean and per-entry variance over many draws."""
    torch.manual_seed(0)
    B, d, e, p = 8, 5, 4, 0.4
    x = torch.randn(B, d, dtype=torch.float64)
    mats = torch.randn(2, d, e, dtype=torch.float64)
    group = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    g = torch.randn(B, e, dtype=torch.float64)
    _, _, perm, counts = group_by_relation(group)

    def grads(fn, draws=3000):
        gx, gw = [], []
        for _ in range(draws):
            xx, mm = x.clone().requires_grad_(), mats.clone().requires_grad_()
            out = fn(xx, mm)
            out.backward(g)
            gx.append(xx.grad)
            gw.append(mm.grad)
        return torch.stack(gx), torch.stack(gw)

    exact = grads(lambda a, b: per_sample_dropout_matmul(a, group, b, p))
    moments = grads(lambda a, b: gradient_noise_matmul(a, group, b, p, (perm, counts)))
    torch.testing.assert_close(gradient_noise_matmul(x, group, mats, p, (perm, counts)),
                               torch.einsum("bi,bij->bj", x, mats[group]))
    for a, b in zip(exact, moments):
        se = (a.var(0) / a.size(0)).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 5 * se * 2 ** 0.5).all()
        ratio = a.var(0) / b.var(0)
        assert ((ratio > 0.85) & (ratio < 1.15)).all(), ratio
    # without the noise the variance would be zero: the test can fail
    assert moments[1].var(0).min() > 1e-3


def test_keep_masks_rate_independence_and_validation():
    import momok_pyg.nn.kernels.tucker_dropout as td
    thr = keep_threshold(0.4)
    keep = keep_masks(torch.tensor(11), torch.tensor(0), 200, (100, 100), thr)
    assert keep.dtype == torch.bool and keep.shape == (200, 100, 100)
    assert abs(keep.float().mean().item() - thr / 2**15) < 1e-3  # 2M draws: std 3.5e-4
    assert abs(thr / 2**15 - 0.6) <= 2**-16
    # neighbours (same word, next word, next row) and another seed are uncorrelated
    k = keep.float()
    for a, b in ((k[..., :-1], k[..., 1:]), (k[:, :-1], k[:, 1:]), (k[:-1], k[1:]),
                 (k, keep_masks(torch.tensor(12), torch.tensor(0), 200, (100, 100),
                                thr).float())):
        assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < 4e-3
    # rows are addressed absolutely; the eager (in-place, blockwise) draw gives the same bits
    seed = torch.tensor(-5)
    tail = keep_masks(seed, torch.tensor(3), 4, (5, 7), thr)
    torch.testing.assert_close(tail, keep_masks(seed, torch.tensor(0), 7, (5, 7), thr)[3:])
    torch.testing.assert_close(td._all_masks(seed, 7, (5, 7), thr, chunk=2),
                               keep_masks(seed, torch.tensor(0), 7, (5, 7), thr))
    assert keep_masks(seed, torch.tensor(0), 100, (10, 10), keep_threshold(0.0)).all()
    # the kernels take the int32 key, computed once outside them: same masks as the seed
    key = td.seed_key(seed)
    assert key.dtype == torch.int32 and td.seed_key(key) is key
    torch.testing.assert_close(keep_masks(key, torch.tensor(2), 5, (5, 7), thr),
                               keep_masks(seed, torch.tensor(2), 5, (5, 7), thr))
    assert len({int(td.seed_key(torch.tensor(s))) for s in range(100)}) == 100
    # no correlation at any of these lags, for several seeds (16.7M entries: |z| < 5; a hash
    # of counter ^ key without the odd multiplier gives z ~ 9 at lag 64 for every key)
    n = 1 << 24
    for s in (0, 1, 2):
        m = td.flat_keep_masks(torch.tensor(s), (n, ), thr).float()
        for lag in (1, 2, 64, 300, 1024, 90000):
            corr = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1]
            assert abs(float(corr)) * n ** 0.5 < 5, (s, lag, float(corr))
    with pytest.raises(ValueError, match="2\\*\\*31 entries"):  # int32 counters
        per_sample_dropout_matmul(torch.zeros(1000, 1500), torch.zeros(1000, dtype=torch.long),
                                  torch.zeros(1, 1500, 1500), 0.5)
    stored = draw_keep_masks((200, 100, 100), 0.4, torch.Generator().manual_seed(0))
    assert stored.dtype == torch.bool and stored.shape == (200, 100, 100)
    assert abs(stored.float().mean().item() - keep_probability(0.4)) < 1e-3
    assert draw_keep_masks((1000, ), 0.0).all()
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            keep_threshold(bad)
    with pytest.raises(ValueError, match="chunk"):
        per_sample_dropout_matmul(torch.randn(2, 3), torch.zeros(2, dtype=torch.long),
                                  torch.randn(1, 3, 3), 0.5, chunk=0)


def test_dropout_is_inverted_dropout_with_its_keep_probability():
    import momok_pyg.nn.kernels.tucker_dropout as td
    x = torch.randn(400, 300, requires_grad=True)
    y = td.dropout(x, 0.3, True, torch.Generator().manual_seed(0))
    kept = y != 0
    assert abs(kept.float().mean().item() - keep_probability(0.3)) < 5e-3
    assert torch.allclose(y[kept], x[kept] / keep_probability(0.3))
    y.backward(torch.ones_like(y))  # the gradient is the mask over the keep probability
    assert torch.allclose(x.grad, kept.float() / keep_probability(0.3))
    again = td.dropout(x, 0.3, True, torch.Generator().manual_seed(0))
    assert torch.equal(again, y) and not torch.equal(td.dropout(x, 0.3, True), y)
    assert td.dropout(x, 0.3, False) is x and td.dropout(x, 0.0, True) is x
    with pytest.raises(ValueError, match="dropout probability"):
        td.dropout(x, 1.0, True)


def test_relation_hidden_dropout_shares_one_mask_per_relation():
    rel_mode = _hidden_samples("relation", 64)  # all 64 samples have relation 1
    assert torch.allclose(rel_mode, rel_mode[:1].expand_as(rel_mode))
    exact = _hidden_samples("sample", 64)
    assert not torch.allclose(exact, exact[:1].expand_as(exact))
    with pytest.raises(ValueError, match="hidden_dropout_mode"):
        TuckerScorer(3, 4, 4, hidden_dropout_mode="bernoulli")
    # p = 1 drops every matrix entry, and the core still takes part in the graph (a zero
    # gradient, as F.dropout gave), so Adam's moments keep decaying for it
    scorer = TuckerScorer(3, 6, 4, input_dropout=0.0, hidden_dropout=1.0, output_dropout=0.0,
                          batch_norm=False, hidden_dropout_mode="relation").train()
    q = scorer.query(torch.randn(5, 6), torch.tensor([0, 1, 1, 2, 0]))
    assert torch.equal(q, torch.zeros_like(q))
    q.sum().backward()
    assert scorer.core.grad is not None and torch.equal(scorer.core.grad,
                                                         torch.zeros_like(scorer.core))


# --------------------------------------------------------------------------------- ReMoKE --
def test_remoke_experts_match_definition():
    torch.manual_seed(0)
    rk = ReMoKE(6, 4, num_experts=3)
    with torch.no_grad():
        rk.bias.normal_()
    x = torch.randn(9, 6)
    views = rk.experts(x)
    for i in range(3):  # V_i = W_i (x - b_i)
        torch.testing.assert_close(views[:, i], (x - rk.bias[i]) @ rk.weight[:, i])


def test_remoke_expert_dropout_masks_every_expert_input_independently():
    # training views with expert dropout == the definition on inputs masked by the
    # draw_keep_masks masks of the global generator, one [n, d_in] mask per expert
    from momok_pyg.nn.kernels.tucker_dropout import keep_probability as keep
    torch.manual_seed(0)
    rk = ReMoKE(37, 4, num_experts=3, dropout=0.3).train()
    with torch.no_grad():
        rk.bias.normal_()
    x = torch.randn(50, 37)
    torch.manual_seed(7)
    views = rk.experts(x)
    torch.manual_seed(7)
    mask = draw_keep_masks((50, 3, 37), 0.3).float() / keep(0.3)
    assert 0.6 < mask.ne(0).float().mean() < 0.8
    assert not torch.equal(mask[:, 0], mask[:, 1])
    for i in range(3):  # V_i = W_i (drop_i(x) - b_i)
        torch.testing.assert_close(views[:, i], (x * mask[:, i] - rk.bias[i]) @ rk.weight[:, i])
    rk.eval()
    torch.testing.assert_close(rk.experts(x)[:, 1], (x - rk.bias[1]) @ rk.weight[:, 1])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="expert dropout"):
            ReMoKE(6, 4, dropout=bad)


@pytest.mark.parametrize("d_in", [6, 16, 37])
def test_remoke_expert_gradients_match_definition(d_in):
    # widths off a multiple of 16 take the padded input-gradient product
    torch.manual_seed(0)
    rk = ReMoKE(d_in, 5, num_experts=3)
    with torch.no_grad():
        rk.bias.normal_()
    x = torch.randn(40, d_in, requires_grad=True)
    g = torch.randn(40, 3, 5)
    views = rk.experts(x)
    assert ("InputGradPadded" in type(views.grad_fn.next_functions[0][0]).__name__) == (
        d_in % 16 != 0)
    views.backward(g)
    x2 = x.detach().clone().requires_grad_()
    w, b = rk.weight.detach().clone().requires_grad_(), rk.bias.detach().clone().requires_grad_()
    torch.einsum("nki,ikd->nkd", x2.unsqueeze(1) - b, w).backward(g)
    for got, want in ((x.grad, x2.grad), (rk.weight.grad, w.grad), (rk.bias.grad, b.grad)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("gate_input", ["views", "raw"])
def test_gates_sum_to_one_and_sharpen_with_temperature(gate_input):
    torch.manual_seed(0)
    rk = ReMoKE(8, 8, num_experts=4, gate_input=gate_input).eval()
    with torch.no_grad():
        rk.w_gate.normal_()
    x = torch.randn(64, 8)
    entropies = []
    for t in (1.0, 0.5, 0.2, 0.05):
        out = rk(x, torch.full((64, ), t))
        torch.testing.assert_close(out.gates.sum(-1), torch.ones(64))
        entropies.append(float(gate_entropy(out.gates.detach())))
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    assert entropies[-1] < 0.5 * entropies[0]
    # official gate: logits from the raw input; paper gate: U_m applied to every view
    views = rk.experts(x)
    logits = x @ rk.w_gate if gate_input == "raw" else (views @ rk.w_gate).squeeze(-1)
    torch.testing.assert_close(rk.gate_logits(x, views), logits)


def test_gate_noise_only_in_training():
    torch.manual_seed(0)
    rk = ReMoKE(5, 5, num_experts=3, noise=True)
    x = torch.randn(20, 5)
    rk.train()
    assert not torch.allclose(rk(x).gates, rk(x).gates)
    rk.eval()
    torch.testing.assert_close(rk(x).gates, rk(x).gates)
    rk_quiet = ReMoKE(5, 5, num_experts=3, noise=False).train()
    torch.testing.assert_close(rk_quiet(x).gates, rk_quiet(x).gates)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
def test_fused_candidates_equal_gate_and_mix(training, compiled, monkeypatch):
    # candidates() (one fused pass forward and backward) = mix(gates(gate_logits)), with the
    # same noise draw, in values and in the gradients of views, U_m, U'_m and the logits
    if not compiled:
        monkeypatch.setenv("MOMOK_PYG_COMPILE", "0")
    torch.manual_seed(0)
    rk = ReMoKE(6, 5, num_experts=3, noise=True).train(training)
    with torch.no_grad():
        rk.w_gate.normal_()
        rk.w_noise.normal_()
    x = torch.randn(30, 6)
    views = rk.experts(x).detach().requires_grad_()
    grad_out, grad_logits = torch.randn(30, 5), torch.randn(30, 3)
    results = []
    for fused in (True, False):
        torch.manual_seed(1)
        if fused:
            cand, logits = rk.candidates(x, views)
        else:
            logits = rk.gate_logits(x, views)
            cand = ReMoKE.mix(ReMoKE.gates(logits), views)
        params = (views, rk.w_gate, rk.w_noise) if training else (views, rk.w_gate)
        grads = torch.autograd.grad((cand * grad_out).sum() + (logits * grad_logits).sum(),
                                    params)
        results.append((cand, logits) + grads)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(results[0][-1], torch.zeros(()))  # noise/gate weight learns


# ------------------------------------------------------------------------------- fusion ---
def test_fusion_matches_definition_and_mean_is_uniform():
    torch.manual_seed(0)
    fu = ModalityFusion({"a": 3, "b": 5}, 4, heads=2, dropout=0.2).eval()
    xs = {"a": torch.randn(7, 3), "b": torch.randn(7, 5)}
    fused, w = fu(xs)
    ref = 0
    for h in range(2):
        p = torch.stack([torch.relu(xs[m] @ fu.weight[m][h] + fu.bias[m][h]) for m in "ab"], 1)
        alpha = torch.softmax(p @ fu.attn, dim=1)
        ref = ref + (alpha.unsqueeze(-1) * p).sum(1)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(w.sum(-1), torch.ones(7))
    mean = ModalityFusion({"a": 3, "b": 5}, 4, fusion="mean").eval()
    torch.testing.assert_close(mean(xs)[1], torch.full((7, 2), 0.5))


def test_fusion_training_values_and_gradients_match_plain_autograd():
    from momok_pyg.nn.kernels.fusion import head_dropout_masks
    torch.manual_seed(0)
    fu = ModalityFusion({"a": 3, "b": 5, "c": 4}, 6, heads=2, dropout=0.3).train()
    xs = {m: torch.randn(9, d, requires_grad=True) for m, d in (("a", 3), ("b", 5), ("c", 4))}
    torch.manual_seed(7)
    fused, _ = fu(xs)
    torch.manual_seed(7)  # the same masks, drawn in the same order
    masks = {m: head_dropout_masks(2, xs[m], 0.3, True) for m in "abc"}
    ps = [torch.relu(torch.baddbmm(fu.bias[m], xs[m] * masks[m] / keep_probability(0.3),
                                   fu.weight[m])) for m in "abc"]
    p = torch.stack(ps, 2)  # [H, n, M, out]
    ref = (torch.softmax(p @ fu.attn, -1).unsqueeze(-1) * p).sum(2).sum(0)
    torch.testing.assert_close(fused, ref)
    w = torch.randn_like(ref)
    inputs = list(xs.values()) + list(fu.parameters())
    for a, b in zip(torch.autograd.grad((fused * w).sum(), inputs),
                    torch.autograd.grad((ref * w).sum(), inputs)):
        torch.testing.assert_close(a, b)


def _fusion_run(fu, xs, seed):
    torch.manual_seed(seed)
    fused, w = fu(xs)
    wf, ww = torch.randn_like(fused), torch.randn_like(w)
    inputs = list(xs.values()) + list(fu.parameters())
    grads = torch.autograd.grad((fused * wf).sum() + (w * ww).sum(), inputs)
    return (fused, w) + grads


def test_fusion_dropout_keeps_no_input_sized_tensor_and_eager_matches_fused(monkeypatch):
    """The fusion's input-dropout masks are recomputed from one seed per modality: nothing
    of the dropped inputs' size ``H n d`` (float or boolean) is saved for backward; the
    eager kernels (``MOMOK_PYG_COMPILE=0``) give the same values and gradients."""
    torch.manual_seed(0)
    heads, n, d, out = 2, 40, 24, 3
    fu = ModalityFusion({"a": d, "b": d}, out, heads=heads, dropout=0.3).train()
    xs = {m: torch.randn(n, d, requires_grad=True) for m in "ab"}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused = _fusion_run(fu, xs, 5)
    assert max(saved) < heads * n * d
    monkeypatch.setenv("MOMOK_PYG_COMPILE", "0")
    eager = _fusion_run(fu, xs, 5)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager[0], _fusion_run(fu, xs, 6)[0])  # a new seed, new masks


@pytest.mark.parametrize("layout", ["hdn", "hnd"])
def test_masked_head_sum_equals_eager_in_both_layouts(layout):
    # the fusion's input gradient sum_h D_h * t_h * scale: a t laid out [H, d, n] (the
    # backward's products) takes its own kernel; both equal the eager masks exactly
    from momok_pyg.nn.kernels.fusion import _masked_head_sum, _masked_head_sum_eager
    torch.manual_seed(0)
    heads, n, d = 3, 37, 21
    t = (torch.randn(heads, d, n).transpose(1, 2) if layout == "hdn"
         else torch.randn(heads, n, d))
    seed, threshold = torch.tensor(987654321), keep_threshold(0.3)
    got = _masked_head_sum(t, seed, threshold, 1.25)
    want = _masked_head_sum_eager(t, seed, threshold, 1.25)
    assert got.shape == (n, d) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert 0.4 < (got != 0).float().mean() < 0.99  # some entries dropped in every head


@pytest.mark.parametrize("fusion", ["attention", "mean"])
@pytest.mark.parametrize("dropout", [0.25, 0.0])
def test_fusion_gradcheck_through_both_outputs(fusion, dropout):
    # the fused autograd node against finite differences (float64), through the joint
    # embedding and the returned weights, with the dropout masks redrawn identically per call;
    # without dropout the heads share one product and a strided [H, n, o] projection
    torch.manual_seed(0)
    fu = ModalityFusion({"a": 3, "b": 4}, 5, heads=2, dropout=dropout,
                        fusion=fusion).double().train()
    names = [n for n, _ in fu.named_parameters()]
    xb = torch.randn(6, 4, dtype=torch.float64)  # an input that needs no gradient
    wf, ww = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def fn(xa, *ps):
        torch.manual_seed(3)
        fused, w = torch.func.functional_call(fu, dict(zip(names, ps)), ({"a": xa, "b": xb}, ))
        return (fused * wf).sum() + (w * ww).sum()

    xa = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    ps = [p.detach().clone().requires_grad_(True) for p in fu.parameters()]
    assert torch.autograd.gradcheck(fn, (xa, *ps))
    assert ("attn" in names) == (fusion == "attention")


def test_fused_kernels_take_parameters_of_any_size_without_recompiling():
    # one kernel, called with Parameters of 12 sizes (models of different sizes in one
    # process): parameter shapes are dynamic, so it compiles once or twice, and stays
    # compiled (without that it recompiles per size and, past dynamo's limit of 8, runs
    # op by op from then on)
    from torch._dynamo.utils import counters

    from momok_pyg.nn.kernels import fused

    def scaled_sum(x, w):
        return (x * w).sum(-1)

    if not fused.compile_enabled():
        pytest.skip("fused kernels are off")
    before = counters["stats"]["unique_graphs"]
    for n in range(3, 15):
        w = torch.nn.Parameter(torch.randn(n))
        x = torch.randn(5, n)
        torch.testing.assert_close(fused.run_compiled(scaled_sum, x, w), (x * w).sum(-1))
    assert 1 <= counters["stats"]["unique_graphs"] - before <= 2
