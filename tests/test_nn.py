"""Tests of the assembled MoMoK model (momok_pyg.nn.MoMoK) and the TuckER baseline."""
import math

import pytest
import torch
import torch.nn.functional as F

from momok_pyg.datasets.schema import build_mmkg
from momok_pyg.nn import MoMoK, TuckER

N, R = 30, 3

pytestmark = pytest.mark.usefixtures("single_thread")


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


def test_recomputed_head_views_equal_gathered_views():
    # with gradients on, the heads' expert views are recomputed from their B input rows
    # (so that no [N, K, d] gradient is built); values and gradients must equal gathering
    # the all-entity views
    model = make_model().eval()
    head, rel = batch()
    st = model._compute_state()
    _, views, _ = model._heads(head, rel, st)
    gathered = {m: st.views[m].index_select(0, head) for m in views}
    assert set(views) == set(model.expert_modalities)
    w = {m: torch.randn_like(v) for m, v in views.items()}
    params = list(model.kgc_parameters())
    grads = []
    for vs in (views, gathered):
        loss = sum((vs[m] * w[m]).sum() for m in vs)
        grads.append(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
    for m in views:
        torch.testing.assert_close(views[m], gathered[m], rtol=1e-5, atol=1e-6)
    assert any(a is not None for a in grads[0])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


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


def test_predict_writes_into_out_and_checks_it():
    model = make_model()
    randomise_gates(model)
    head, rel = batch()
    fresh = model.predict(head, rel)
    out = torch.full((12, N), float("nan"))
    with model.cached_entities():
        got = model.predict(head, rel, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, fresh)
    for bad in (torch.empty(11, N), torch.empty(12, N, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"out must be a float32 tensor of shape \(12, "):
            model.predict(head, rel, out=bad)
    # with gradients wanted, mm(out=) cannot be used: the scores are copied in, gradients flow
    model.eval()
    st, heads = model._queries(head, rel)[:2]
    q = model.mujod.queries(heads, rel, st.mats)[0]
    ref = model.mujod.aggregate_queries(q, st.cand)
    got = model.mujod.aggregate_queries(q, st.cand, out=torch.empty(12, N))
    assert got.requires_grad
    torch.testing.assert_close(got, ref)
    params = [p for p in model.parameters() if p.requires_grad]
    w = torch.randn(12, N)
    for a, b in zip(torch.autograd.grad((got * w).sum(), params, retain_graph=True,
                                        allow_unused=True),
                    torch.autograd.grad((ref * w).sum(), params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_scorer_reuses_one_output_buffer_and_ranks_the_same():
    from momok_pyg.evaluate import evaluate_link_prediction
    from momok_pyg.training import scorer
    model = make_model()
    randomise_gates(model)
    fn = scorer(model, reuse_output=True)
    head, rel = batch()
    first = fn(head, rel).clone()
    a, b = fn(head[:5], rel[:5]), fn(head, rel)  # a smaller batch: a view of the same buffer
    assert a.data_ptr() == b.data_ptr()
    torch.testing.assert_close(b, first)
    torch.testing.assert_close(b, model.predict(head, rel))
    g = torch.Generator().manual_seed(0)
    triples = torch.stack([torch.randint(0, N, (30, ), generator=g),
                           torch.randint(0, R, (30, ), generator=g),
                           torch.randint(0, N, (30, ), generator=g)], 1)
    data = build_mmkg(N, R, {"train": triples[:20], "valid": triples[20:25],
                             "test": triples[25:]})
    kw = dict(batch_size=4, breakdowns=False, return_ranks=True)
    with model.cached_entities():
        reused = evaluate_link_prediction(fn, data, **kw)
    plain = evaluate_link_prediction(scorer(model), data, **kw)
    assert torch.equal(reused["ranks"], plain["ranks"])


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
    model = make_model(hidden_dropout_mode="gaussian")
    assert {s.hidden_dropout_mode for s in model.mujod.scorers.values()} == {"gaussian"}
    assert {s.hidden_dropout_mode for s in make_model().mujod.scorers.values()} == {"sample"}
