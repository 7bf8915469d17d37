import copy
import platform
import subprocess
import sys

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
    for _ in range(5):
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


_HOLES = """
import ctypes, sys
from momok_pyg.training.memory import set_malloc_mmap_threshold
assert set_malloc_mmap_threshold(int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
big, small = [], []
for _ in range(24):  # 24 x 8 MiB, each followed by a 512 KiB block that pins the heap
    big.append(libc.malloc(8 << 20))
    ctypes.memset(big[-1], 1, 8 << 20)
    small.append(libc.malloc(512 << 10))
for p in big:
    libc.free(p)
print((rss() - before) / 2**20)
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and
                         platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_fixed_mmap_threshold_returns_freed_blocks_to_the_system():
    """Below the threshold, freed 8 MiB blocks stay in the heap behind the small blocks
    allocated after them (RSS kept, what glibc's growing default threshold does to a training
    step's temporaries); above it, with a 1 MiB threshold, they are unmapped."""
    grown = {}
    for threshold in (32 << 20, 1 << 20):
        out = subprocess.run([sys.executable, "-c", _HOLES, str(threshold)],
                             capture_output=True, text=True, check=True)
        grown[threshold] = float(out.stdout.split()[-1])
    assert grown[32 << 20] > 150 and grown[1 << 20] < 20, grown


def test_mmap_threshold_validation():
    from momok_pyg.training import TrainConfig
    from momok_pyg.training.memory import set_malloc_mmap_threshold
    for bad in (0, -1, 64 << 20):
        with pytest.raises(ValueError, match="mmap threshold"):
            set_malloc_mmap_threshold(bad)
        with pytest.raises(ValueError, match="malloc_mmap_threshold"):
            TrainConfig(malloc_mmap_threshold=bad)
    assert TrainConfig(malloc_mmap_threshold=None).malloc_mmap_threshold is None


@pytest.mark.skipif(not (sys.platform.startswith("linux") and
                         platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_training_threshold_is_scoped_to_the_epoch(monkeypatch):
    """train_epoch fixes the configured threshold for its steps and leaves glibc at the
    maximum (what its growing default reaches) for evaluation; None touches nothing."""
    from momok_pyg.training import memory
    seen = []
    real = memory.set_malloc_mmap_threshold
    monkeypatch.setattr(memory, "set_malloc_mmap_threshold",
                        lambda n: seen.append(n) or real(n))
    with memory.mmap_threshold_while(1 << 20):
        assert memory._applied == 1 << 20
    assert memory._applied == memory.MAX_MMAP_THRESHOLD
    assert seen == [1 << 20, memory.MAX_MMAP_THRESHOLD]
    with memory.mmap_threshold_while(None):
        pass
    assert seen == [1 << 20, memory.MAX_MMAP_THRESHOLD]


def test_gradient_buffers_lend_what_was_given_back():
    from momok_pyg.nn.kernels import grad_buffers as gb
    gb.release()
    cpu = torch.device("cpu")
    assert not gb.give_back(torch.zeros(4, 5))  # shape never requested: not kept
    first = gb.gradient_buffer((4, 5), torch.float32, cpu)
    assert not gb.give_back(torch.zeros(8, 5)[:4])  # a view into a larger storage
    assert not gb.give_back(torch.zeros(4, 5, requires_grad=True))
    assert not gb.give_back(torch.zeros(4, 5, dtype=torch.float64))
    assert gb.give_back(first) and gb.kept_bytes() == 80
    assert not gb.give_back(torch.zeros(4, 5))  # one kept tensor per shape
    again = gb.gradient_buffer((4, 5), torch.float32, cpu)
    assert again.data_ptr() == first.data_ptr() and gb.kept_bytes() == 0  # lent out
    assert gb.gradient_buffer((4, 5), torch.float32, cpu).data_ptr() != first.data_ptr()
    gb.give_back(again)
    gb.release()
    assert gb.kept_bytes() == 0 and not gb.give_back(again)


def test_tucker_cores_share_one_reused_gradient_buffer_and_train_like_adam():
    """Two scorers with cores of one shape (as MoMoK's modalities): under BackwardAdam every
    core gradient of every step is written into the same storage, and the parameters follow
    torch.optim.Adam's exactly."""
    from momok_pyg.nn import TuckerScorer
    from momok_pyg.nn.kernels import grad_buffers
    grad_buffers.release()
    gen = torch.Generator().manual_seed(3)
    head, cand = torch.randn(40, 16, generator=gen), torch.randn(30, 16, generator=gen)
    rel = torch.randint(0, 6, (40, ), generator=gen)

    def scorers():
        torch.manual_seed(0)
        return torch.nn.ModuleList(
            TuckerScorer(6, 16, 12, input_dropout=0.0, hidden_dropout=0.0, output_dropout=0.0)
            for _ in range(2))

    def loss(net, step):
        return sum(((s(head, rel, cand) - step) ** 2).mean() for s in net)

    plain, backward = scorers(), scorers()
    storages = []
    for s in backward:
        s.core.register_post_accumulate_grad_hook(
            lambda p: storages.append(p.grad.untyped_storage().data_ptr()))
    ref = torch.optim.Adam(plain.parameters(), lr=1e-2)
    expected = []
    for step in range(4):  # plain Adam keeps its gradients: it takes, never gives back
        ref.zero_grad()
        loss(plain, step).backward()
        ref.step()
        expected.append([p.detach().clone() for p in plain.parameters()])
    grad_buffers.release()
    opt = BackwardAdam(backward.parameters(), lr=1e-2)
    for step in range(4):
        loss(backward, step).backward()
        for a, b in zip(expected[step], backward.parameters()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    opt.remove_hooks()
    assert len(storages) == 8 and len(set(storages)) == 1
    grad_buffers.release()
