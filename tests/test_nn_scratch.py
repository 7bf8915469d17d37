"""Scratch buffers (momok_pyg.nn.kernels.scratch): reused storage for the large temporaries of the
fusion's and the per-sample Tucker dropout's custom autograd nodes. A scratch tensor must
never outlive the call that asked for it: two graphs built before either runs backward must
get the gradients each would get alone."""
import threading

import pytest
import torch

from momok_pyg.nn import ModalityFusion
from momok_pyg.nn.kernels import scratch
from momok_pyg.nn.kernels.fused import compile_enabled
from momok_pyg.nn.kernels.tucker_dropout import per_sample_dropout_matmul


@pytest.fixture(autouse=True)
def _released():
    scratch.release()
    yield
    scratch.release()


def test_scratch_reuses_grows_and_releases():
    a = scratch.scratch("t.a", (4, 5), torch.float32, "cpu")
    assert a.shape == (4, 5) and a.is_contiguous()
    ptr = a.data_ptr()
    a2 = scratch.scratch("t.a", (3, 6), torch.float32, "cpu")  # smaller: same storage
    assert a2.shape == (3, 6) and a2.data_ptr() == ptr
    assert scratch.scratch("t.b", (4, 5), torch.float32, "cpu").data_ptr() != ptr
    assert scratch.scratch("t.a", (4, 5), torch.float64, "cpu").data_ptr() != ptr
    assert scratch.held_bytes() == 20 * 4 + 20 * 4 + 20 * 8
    big = scratch.scratch("t.a", (10, 10), torch.float32, "cpu")  # grown
    assert big.numel() == 100 and scratch.held_bytes() == 100 * 4 + 20 * 4 + 20 * 8
    scratch.release()
    assert scratch.held_bytes() == 0


def test_scratch_buffers_are_per_thread():
    mine = scratch.scratch("t.thread", (8, ), torch.float32, "cpu").data_ptr()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(
        (scratch.scratch("t.thread", (8, ), torch.float32, "cpu").data_ptr(),
         scratch.held_bytes())))
    worker.start()
    worker.join()
    assert seen[0][0] != mine and seen[0][1] == 32
    assert scratch.held_bytes() == 32  # this thread's own buffer only


def _fusion_graph(fu, xs, seed):
    torch.manual_seed(seed)
    fused, w = fu(xs)
    torch.manual_seed(seed + 100)
    return (fused * torch.randn_like(fused)).sum() + (w * torch.randn_like(w)).sum()


@pytest.mark.parametrize("compiled", [True, False])
def test_interleaved_fusion_graphs_get_their_own_gradients(compiled, monkeypatch):
    # forward A, forward B, backward B, backward A: with a scratch tensor kept past its call
    # (say, the dropped inputs saved for backward), B's forward would overwrite A's
    if not compiled:
        monkeypatch.setenv("MOMOK_PYG_COMPILE", "0")
    elif not compile_enabled():
        pytest.skip("fused kernels are off")
    torch.manual_seed(0)
    fu = ModalityFusion({"a": 24, "b": 20}, 8, heads=2, dropout=0.3).train()
    xs = {m: torch.randn(50, d, requires_grad=True) for m, d in (("a", 24), ("b", 20))}
    inputs = list(xs.values()) + list(fu.parameters())
    alone = [torch.autograd.grad(_fusion_graph(fu, xs, s), inputs) for s in (1, 2)]
    loss_a, loss_b = _fusion_graph(fu, xs, 1), _fusion_graph(fu, xs, 2)
    grads_b = torch.autograd.grad(loss_b, inputs)
    grads_a = torch.autograd.grad(loss_a, inputs)
    for got, want in ((grads_a, alone[0]), (grads_b, alone[1])):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert not torch.equal(alone[0][0], alone[1][0])  # the two graphs do differ
    if compiled:  # the dropped inputs went through the scratch buffer
        assert scratch.held_bytes() >= 2 * 50 * 24 * 4


def test_interleaved_per_sample_dropout_graphs_get_their_own_gradients():
    # the transposed relation matrices of the input-gradient kernel live in a scratch buffer
    if not compile_enabled():
        pytest.skip("fused kernels are off")
    torch.manual_seed(0)
    x = torch.randn(30, 6, requires_grad=True)
    mats = torch.randn(3, 6, 5, requires_grad=True)
    group = torch.randint(0, 3, (30, ))

    def graph(seed, m):
        gen = torch.Generator().manual_seed(seed)
        out = per_sample_dropout_matmul(x, group, m, 0.3, generator=gen, compile=True)
        return (out * torch.randn(out.shape, generator=gen)).sum()

    mats_b = (mats * 1.5).detach().requires_grad_(True)  # B's matrices differ from A's
    alone_a = torch.autograd.grad(graph(1, mats), (x, mats))
    alone_b = torch.autograd.grad(graph(2, mats_b), (x, mats_b))
    loss_a, loss_b = graph(1, mats), graph(2, mats_b)
    got_a = torch.autograd.grad(loss_a, (x, mats))  # A first: B's backward has not run
    got_b = torch.autograd.grad(loss_b, (x, mats_b))
    for got, want in ((got_a, alone_a), (got_b, alone_b)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert scratch.held_bytes() >= 3 * 6 * 5 * 4


def test_train_epoch_releases_scratch_buffers(monkeypatch):
    from momok_pyg.datasets import get_triples
    from momok_pyg.datasets.synthetic import make_synthetic_mmkg
    from momok_pyg.training import OneToNQueries, TrainConfig, build_model, train_epoch
    from momok_pyg.training.step import build_optimizers

    data = make_synthetic_mmkg(num_entities=200, num_triples=2000, num_groups=5,
                               num_attributes=4)
    config = TrainConfig.for_dataset("synthetic", dim=16, batch_size=256, epochs=1,
                                     progress=False)
    model = build_model(config, data)
    opt, q_opt = build_optimizers(model, config)
    queries = OneToNQueries(get_triples(data, "train"), data["entity"].num_nodes,
                            data.num_relations)
    held, release = [], scratch.release

    def recorded_release():
        held.append(scratch.held_bytes())
        release()

    monkeypatch.setattr(scratch, "release", recorded_release)
    train_epoch(model, queries, opt, q_opt, config, 1)
    assert len(held) == 1 and held[0] > 0  # used during the epoch, released once at its end
    assert scratch.held_bytes() == 0
