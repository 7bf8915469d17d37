"""Tests of the MoMoK model components (momok_pyg.nn)."""
import math

import pytest
import torch
import torch.nn.functional as F

from momok_pyg.datasets.schema import build_mmkg
from momok_pyg.nn import (CLUB, ExID, ModalityFusion, MoMoK, MuJoD, ReMoKE, TuckER,
                          TuckerScorer, gate_entropy, relation_grouped_matmul)

N, R = 30, 3


@pytest.fixture(autouse=True)
def _single_thread():
    # Tensors here are tiny: intra-op threads only add synchronisation, which on a loaded
    # 2-core machine made some tests 100x slower. Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_features(n=N, seed=0, missing=True):
    g = torch.Generator().manual_seed(seed)
    feats = {"image": torch.randn(n, 12, generator=g), "text": torch.randn(n, 10, generator=g)}
    masks = {"image": torch.ones(n, dtype=torch.bool), "text": torch.ones(n, dtype=torch.bool)}
    if missing:
        masks["image"][[1, 4, 7]] = False
        masks["text"][[2]] = False
    return feats, masks


def make_model(seed=0, **kwargs):
    feats, masks = toy_features()
    torch.manual_seed(seed)
    kwargs.setdefault("dim", 16)
    return MoMoK(N, R, feats, masks, **kwargs)


def batch(b=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, N, (b, ), generator=g), torch.randint(0, 2 * R, (b, ), generator=g))


def randomise_gates(model):
    with torch.no_grad():
        for rk in model.experts.values():
            rk.w_gate.normal_(0, 1.0)
        if model.temperature is not None:
            model.temperature.eps.weight.normal_(0, 2.0)


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


def test_relation_hidden_dropout_shares_one_mask_per_relation():
    rel_mode = _hidden_samples("relation", 64)  # all 64 samples have relation 1
    assert torch.allclose(rel_mode, rel_mode[:1].expand_as(rel_mode))
    exact = _hidden_samples("sample", 64)
    assert not torch.allclose(exact, exact[:1].expand_as(exact))
    with pytest.raises(ValueError, match="hidden_dropout_mode"):
        TuckerScorer(3, 4, 4, hidden_dropout_mode="bernoulli")


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


def test_one_to_n_loss_rejects_bad_input():
    from momok_pyg.nn import one_to_n_loss
    s = torch.randn(3, 5)
    with pytest.raises(ValueError, match="shape"):
        one_to_n_loss(s, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="loss must be"):
        one_to_n_loss(s, torch.zeros(3, 5), "mse")
    with pytest.raises(ValueError, match="label_smoothing"):
        one_to_n_loss(s, torch.zeros(3, 5), "ce", 1.0)


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
    from momok_pyg.nn.mujod import head_dropout_masks
    torch.manual_seed(0)
    fu = ModalityFusion({"a": 3, "b": 5, "c": 4}, 6, heads=2, dropout=0.3).train()
    xs = {m: torch.randn(9, d, requires_grad=True) for m, d in (("a", 3), ("b", 5), ("c", 4))}
    torch.manual_seed(7)
    fused, _ = fu(xs)
    torch.manual_seed(7)  # the same masks, drawn in the same order
    masks = {m: head_dropout_masks(2, xs[m], 0.3, True) for m in "abc"}
    ps = [torch.relu(torch.baddbmm(fu.bias[m], xs[m] * masks[m] / 0.7, fu.weight[m]))
          for m in "abc"]
    p = torch.stack(ps, 2)  # [H, n, M, out]
    ref = (torch.softmax(p @ fu.attn, -1).unsqueeze(-1) * p).sum(2).sum(0)
    torch.testing.assert_close(fused, ref)
    w = torch.randn_like(ref)
    inputs = list(xs.values()) + list(fu.parameters())
    for a, b in zip(torch.autograd.grad((fused * w).sum(), inputs),
                    torch.autograd.grad((ref * w).sum(), inputs)):
        torch.testing.assert_close(a, b)


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


# ---------------------------------------------------------------------------------- ExID ---
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
    exid = ExID({"a": 6, "b": 4}, num_experts=3)
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


# --------------------------------------------------------------------------------- MoMoK ---
@pytest.mark.parametrize("loss", ["ce", "bce"])
@pytest.mark.parametrize("bf16", [False, True])
def test_forward_loss_equals_loss_of_scores(loss, bf16):
    # the training step's fused path == kgc_loss(forward(...).scores): value and gradients
    model = make_model(loss=loss)
    model.train()
    head, rel = batch()
    target = torch.zeros(len(head), N)
    target[torch.arange(len(head)), torch.randint(0, N, (len(head), ))] = 1
    target[0, :3] = 1
    params = [p for p in model.kgc_parameters()]
    results = []
    for fused in (False, True):
        torch.manual_seed(5)  # same dropout / gate-noise draws in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fused:
                value = model.forward_loss(head, rel, target.to_sparse()).loss
            else:
                out = model(head, rel)
                value = model.kgc_loss({m: s.float() for m, s in out.scores.items()}, target)
        results.append((value, torch.autograd.grad(value, params, allow_unused=True)))
    (v0, g0), (v1, g1) = results
    tol = dict(rtol=2e-2, atol=1e-3) if bf16 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(v1, v0, **tol)
    for name_p, a, b in zip([n for n, p in model.named_parameters()
                             if id(p) in {id(q) for q in params}], g1, g0):
        if a is None or b is None:
            assert a is None and b is None, name_p
            continue
        torch.testing.assert_close(a, b, **tol, msg=name_p)


def test_gradients_reach_every_parameter():
    model = make_model()
    model.train()
    head, rel = batch()
    out = model(head, rel)
    target = torch.zeros(len(head), N)
    target[torch.arange(len(head)), torch.randint(0, N, (len(head), ))] = 1
    (model.kgc_loss(out.scores, target) + 1e-4 * model.exid.upper_bound(out.views)).backward()
    exid_ids = {id(p) for p in model.exid.parameters()}
    for name, p in model.named_parameters():
        if id(p) in exid_ids:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.exid.learning_loss(out.views).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.exid.parameters())
    kgc = {id(p) for p in model.kgc_parameters()}
    assert kgc.isdisjoint(exid_ids)
    assert len(kgc) + len(exid_ids) == len(list(model.parameters()))


def test_output_shapes_and_gates():
    model = make_model().eval()
    head, rel = batch()
    out = model(head, rel)
    assert model.score_modalities == ["structure", "image", "text", "joint"]
    assert set(out.scores) == set(model.score_modalities)
    assert all(s.shape == (12, N) for s in out.scores.values())
    assert all(v.shape == (12, 3, 16) for v in out.views.values())
    for g in out.gates.values():
        torch.testing.assert_close(g.sum(-1), torch.ones(12))
    assert out.fusion_weights.shape == (12, 3)
    torch.testing.assert_close(model.predict(head, rel),
                               sum(out.scores[m] for m in model.score_modalities),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.predict(head, rel, ["image", "joint"]),
                               out.scores["image"] + out.scores["joint"], rtol=1e-4, atol=1e-4)
    with pytest.raises(KeyError, match="scored modalities"):
        model.predict(head, rel, ["audio"])


def test_missing_placeholder_is_used_and_masked_rows_are_ignored():
    feats, masks = toy_features()
    torch.manual_seed(0)
    a = MoMoK(N, R, feats, masks, dim=16).eval()
    changed = {m: x.clone() for m, x in feats.items()}
    changed["image"][[1, 4, 7]] = 100.0 * torch.randn(3, 12)
    changed["text"][2] = -50.0
    torch.manual_seed(0)
    b = MoMoK(N, R, changed, masks, dim=16).eval()
    head = torch.tensor([1, 4, 7, 2, 0, 3])
    rel = torch.tensor([0, 1, 2, 3, 4, 5])
    torch.testing.assert_close(a.predict(head, rel), b.predict(head, rel))
    # ... while a *present* row does matter, and the placeholder is what missing rows read
    changed["image"][0] += 1.0
    torch.manual_seed(0)
    c = MoMoK(N, R, changed, masks, dim=16).eval()
    assert not torch.allclose(a.predict(head, rel), c.predict(head, rel))
    table = a.inputs["image"]
    assert table.placeholder is not None and a.inputs["text"].placeholder is not None
    torch.testing.assert_close(table()[1], table.placeholder)
    assert table.placeholder.abs().sum() > 0  # not a silent zero
    full = MoMoK(N, R, *toy_features(missing=False), dim=16)
    assert full.inputs["image"].placeholder is None


def test_eval_is_deterministic_and_predict_restores_mode():
    model = make_model()
    head, rel = batch()
    model.train()
    s1 = model.predict(head, rel)
    assert model.training
    s2 = model.predict(head, rel)
    torch.testing.assert_close(s1, s2)
    out1, out2 = model(head, rel), model(head, rel)  # training: noise and dropout
    assert not torch.allclose(out1.scores["structure"], out2.scores["structure"])
    assert not torch.allclose(out1.gates["image"], out2.gates["image"])


def test_cached_entities_matches_and_is_never_stale():
    model = make_model()
    randomise_gates(model)
    head, rel = batch()
    fresh = model.predict(head, rel)
    with model.cached_entities():
        assert not model.training
        torch.testing.assert_close(model.predict(head, rel), fresh)
        with torch.no_grad():
            model.inputs["structure"].emb.weight.add_(0.5)
        updated = model.predict(head, rel)
    assert model.training
    assert not torch.allclose(updated, fresh)
    torch.testing.assert_close(updated, model.predict(head, rel))


def test_ablation_switches():
    head, rel = batch()
    mean = make_model(fusion="mean").eval()
    torch.testing.assert_close(mean(head, rel).fusion_weights, torch.full((12, 3), 1 / 3))

    no_joint = make_model(joint=False)
    assert "joint" not in no_joint.score_modalities
    assert "joint" not in no_joint.eval()(head, rel).scores
    assert not any("fusion" in n for n, _ in no_joint.named_parameters())

    assert make_model(exid=False).exid is None
    assert make_model(num_experts=1).exid is None  # MI between experts needs two
    no_struct = make_model(use_structure=False)
    assert no_struct.score_modalities == ["image", "text", "joint"]
    only_text = make_model(modalities=["text"])
    assert only_text.score_modalities == ["structure", "text", "joint"]

    same_head = torch.zeros(2 * R, dtype=torch.long)
    all_rel = torch.arange(2 * R)
    for flag in (True, False):
        model = make_model(rel_temperature=flag)
        randomise_gates(model)
        gates = model.eval()(same_head, all_rel).gates["image"]
        varies = not torch.allclose(gates, gates[:1].expand_as(gates))
        assert varies == flag

    quiet = make_model(noise=False).train()
    torch.testing.assert_close(quiet(head, rel).gates["text"], quiet(head, rel).gates["text"])
    raw = make_model(gate_input="raw")
    assert raw.experts["image"].w_gate.shape == (12, 3)


@pytest.mark.parametrize("num_feature_modalities", [0, 1, 3])
def test_any_number_of_feature_modalities(num_feature_modalities):
    g = torch.Generator().manual_seed(0)
    names = ["image", "text", "audio"][:num_feature_modalities]
    feats = {m: torch.randn(N, 5 + i, generator=g) for i, m in enumerate(names)}
    torch.manual_seed(0)
    model = MoMoK(N, R, feats, dim=8, num_experts=2)
    assert model.score_modalities == ["structure"] + names + ["joint"]
    head, rel = batch()
    out = model(head, rel)
    target = torch.zeros(12, N)
    target[:, 0] = 1
    loss = model.kgc_loss(out.scores, target) + model.exid.upper_bound(out.views)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.predict(head, rel).shape == (12, N)


def test_tucker_baseline_is_plain_tucker():
    torch.manual_seed(0)
    model = TuckER(N, R, dim=8)
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("inputs.structure.", "mujod.scorers.structure.")) for n in names)
    assert model.exid is None and model.experts is None and model.temperature is None
    assert model.score_modalities == ["structure"]
    model.eval()
    head, rel = batch()
    emb = model.inputs["structure"].emb.weight
    ref = model.mujod.scorers["structure"](emb[head], rel, emb)
    torch.testing.assert_close(model.predict(head, rel), ref)


def test_bf16_autocast_trains():
    model = make_model()
    head, rel = batch()
    target = torch.zeros(12, N)
    target[:, 3] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(head, rel)
        loss = model.kgc_loss(out.scores, target) + 1e-4 * model.exid.upper_bound(out.views)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.kgc_parameters() if p.grad is not None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model.predict(head, rel)
    ref = model.predict(head, rel)
    assert torch.corrcoef(torch.stack([pred.flatten(), ref.flatten()]))[0, 1] > 0.95


def test_from_data_and_input_errors():
    feats, masks = toy_features()
    triples = torch.stack([torch.arange(N), torch.arange(N) % R, (torch.arange(N) + 1) % N], 1)
    data = build_mmkg(N, R, {"train": triples, "valid": triples[:3], "test": triples[3:6]},
                      features=feats, masks=masks)
    model = MoMoK.from_data(data, dim=8)
    assert model.score_modalities == ["structure", "image", "text", "joint"]
    assert int((~model.inputs["image"].mask).sum()) == 3
    assert TuckER.from_data(data, dim=8).score_modalities == ["structure"]
    with pytest.raises(ValueError, match="reciprocal"):
        model(torch.tensor([0]), torch.tensor([2 * R]))
    with pytest.raises(ValueError, match="head ids"):
        model(torch.tensor([N]), torch.tensor([0]))
    with pytest.raises(ValueError, match="reserved"):
        MoMoK(N, R, {"joint": torch.randn(N, 3)})
    with pytest.raises(ValueError, match="no features given"):
        MoMoK(N, R, feats, modalities=["audio"])
    with pytest.raises(ValueError, match="all False"):
        MoMoK(N, R, feats, {"image": torch.zeros(N, dtype=torch.bool)})


def test_feature_preprocessing_options():
    feats, masks = toy_features()
    model = MoMoK(N, R, feats, masks, dim=8, feature_pool=4, finetune_features=False)
    table = model.inputs["image"]
    assert table.dim == 4 and table.table is None
    assert not any(n.endswith("image.table") for n, _ in model.named_parameters())
    ref = F.adaptive_avg_pool1d(F.normalize(feats["image"], dim=1).unsqueeze(1), 4).squeeze(1)
    torch.testing.assert_close(table()[0], ref[0])
    tuned = MoMoK(N, R, feats, masks, dim=8, feature_norm=None)
    torch.testing.assert_close(tuned.inputs["text"]()[0], feats["text"][0])
    assert any(n.endswith("text.table") for n, _ in tuned.named_parameters())


def test_overfits_a_toy_graph():
    torch.manual_seed(0)
    n, r = 24, 2
    heads = torch.arange(n)
    zeros, ones = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    triples = torch.cat([torch.stack([heads, zeros, (heads * 7 + 3) % n], 1),
                         torch.stack([heads, ones, (heads * 5 + 1) % n], 1)])
    h = torch.cat([triples[:, 0], triples[:, 2]])  # both directions via reciprocal relations
    rel = torch.cat([triples[:, 1], triples[:, 1] + r])
    t = torch.cat([triples[:, 2], triples[:, 0]])
    target = torch.zeros(len(h), n)
    target[torch.arange(len(h)), t] = 1
    feats = {"image": torch.randn(n, 6)}
    model = MoMoK(n, r, feats, dim=16, num_experts=2, input_dropout=0.0, hidden_dropout=0.0,
                  output_dropout=0.0, fusion_dropout=0.0)
    opt = torch.optim.Adam(model.kgc_parameters(), lr=0.02)

    def mrr():
        scores = model.predict(h, rel)
        rank = (scores > scores[torch.arange(len(h)), t].unsqueeze(1)).sum(1) + 1
        return float((1.0 / rank.float()).mean())

    before, losses = mrr(), []
    for _ in range(60):
        opt.zero_grad()
        out = model(h, rel)
        loss = model.kgc_loss(out.scores, target)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    after = mrr()
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    assert after > 0.9 and after > before + 0.4, (before, after)
    assert math.isfinite(losses[-1])


def test_hidden_dropout_mode_reaches_every_scorer():
    model = make_model(hidden_dropout_mode="sample")
    assert {s.hidden_dropout_mode for s in model.mujod.scorers.values()} == {"sample"}
    assert {s.hidden_dropout_mode for s in make_model().mujod.scorers.values()} == {"gaussian"}
