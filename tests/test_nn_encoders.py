"""A PyG GNN as the structure modality's encoder (momok_pyg.nn.encoders): the structure input
is the encoder's output over the training graph only, gradients reach the encoder, the
composition trains through the loop and the CLI."""
import subprocess
import sys

import pytest
import torch

from momok_pyg.datasets import get_triples
from momok_pyg.datasets.schema import STRUCTURE
from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.nn import MoMoK, TuckER
from momok_pyg.nn.encoders import RGCNEncoder
from momok_pyg.training import TrainConfig, train

TINY = dict(num_entities=400, num_triples=5000, num_groups=8, num_attributes=4)


class _Recorder(torch.nn.Module):
    """An encoder that records the graph it is given and adds one learned vector."""
    def __init__(self, dim):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(dim))
        self.seen = None

    def forward(self, x, edge_index, edge_type):
        self.seen = (edge_index, edge_type)
        return x + self.shift


def test_the_structure_input_is_the_encoder_over_the_training_graph():
    data = make_synthetic_mmkg(**TINY)
    enc = _Recorder(16)
    model = MoMoK.from_data(data, dim=16, structure_encoder=enc)
    with torch.no_grad():
        enc.shift.fill_(0.5)
    x = model.inputs[STRUCTURE]()
    torch.testing.assert_close(x, model.inputs[STRUCTURE].emb.weight + 0.5)
    train_t = get_triples(data, "train")
    assert torch.equal(enc.seen[0], train_t[:, [0, 2]].t())  # train edges, never valid/test
    assert torch.equal(enc.seen[1], train_t[:, 1])
    out = model.forward_loss(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]),
                             torch.eye(3, data["entity"].num_nodes))
    out.loss.backward()
    assert enc.shift.grad is not None and enc.shift.grad.abs().sum() > 0
    assert any(n.startswith("inputs.structure.encoder.") for n, _ in model.named_parameters())


def test_rgcn_encoder_passes_messages_along_inverse_edges():
    torch.manual_seed(0)
    enc = RGCNEncoder(8, num_relations=2, num_layers=1, residual=False)
    x = torch.randn(3, 8)
    edge_index, edge_type = torch.tensor([[0], [1]]), torch.tensor([1])  # 0 -r1-> 1
    out = enc(x, edge_index, edge_type)
    conv = enc.convs[0]
    # node 1 hears node 0 through relation 1, node 0 hears node 1 through inverse 1 + 2 = 3
    w = conv.weight
    torch.testing.assert_close(out[1], x[1] @ conv.root + conv.bias + x[0] @ w[1])
    torch.testing.assert_close(out[0], x[0] @ conv.root + conv.bias + x[1] @ w[3])
    torch.testing.assert_close(out[2], x[2] @ conv.root + conv.bias)  # isolated
    no_inv = RGCNEncoder(8, num_relations=2, num_layers=1, residual=False, add_inverse=False)
    assert no_inv.convs[0].num_relations == 2


@pytest.mark.parametrize("num_bases", [None, 3])
def test_the_edge_wise_rgcn_layers_equal_pyg_rgcnconv(num_bases):
    # same parameters, same function: the per-relation products over each relation's edges
    # (impl="edges") equal RGCNConv's own forward, in values and in every gradient; a graph
    # with repeated (target, relation) pairs checks the per-relation mean
    torch.manual_seed(1)
    n, rels = 30, 4
    edge_index = torch.randint(0, n, (2, 200))
    edge_type = torch.randint(0, rels - 1, (200, ))  # relation rels-1 has no edge
    x = torch.randn(n, 12, requires_grad=True)
    fast = RGCNEncoder(12, rels, num_layers=2, num_bases=num_bases, dropout=0.0)
    ref = RGCNEncoder(12, rels, num_layers=2, num_bases=num_bases, dropout=0.0, impl="pyg")
    ref.load_state_dict(fast.state_dict())
    assert fast.impl == "edges"
    outs, grads = [], []
    for enc in (fast, ref):
        out = enc(x, edge_index, edge_type)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in enc.parameters()])
        x.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        RGCNEncoder(4, 2, impl="sparse")
    with pytest.raises(ValueError, match=r"RGCNEncoder\(dim=12\) got entity states of shape "
                                         r"\(30, 8\)"):
        fast(torch.randn(30, 8), edge_index, edge_type)


def test_bad_encoders_and_graphs_are_refused():
    data = make_synthetic_mmkg(**TINY)
    with pytest.raises(ValueError, match="same shape"):
        bad = MoMoK.from_data(data, dim=16, structure_encoder=_Shrink())
        bad.inputs[STRUCTURE]()
    with pytest.raises(ValueError, match="needs the training graph"):
        MoMoK(10, 2, dim=4, structure_encoder=_Recorder(4))
    with pytest.raises(ValueError, match="use_structure=False"):
        MoMoK.from_data(data, dim=16, use_structure=False, structure_encoder=_Recorder(16))
    with pytest.raises(ValueError, match="applies to MoMoK and TuckER"):
        TrainConfig(model="distmult", structure_encoder={"name": "rgcn"})
    with pytest.raises(ValueError, match="expected {'name': 'rgcn'"):
        TrainConfig(structure_encoder={"name": "gat"})


class _Shrink(torch.nn.Module):
    def forward(self, x, edge_index, edge_type):
        return x[:, :4]


@pytest.mark.parametrize("model", ["tucker", "momok"])
def test_rgcn_composition_trains_through_the_loop(tmp_path, model):
    config = TrainConfig(dataset="synthetic", synthetic=TINY, model=model, dim=16, lr=0.01,
                         batch_size=512, epochs=2, eval_every=1, patience=100, threads=1,
                         seed=1, progress=False, device="cpu",
                         structure_encoder={"name": "rgcn", "num_bases": 4})
    metrics = train(config, tmp_path / model)
    assert metrics["epochs_run"] == 2 and metrics["test"]["mrr"] > 0
    assert "RGCNEncoder" in (tmp_path / model / "env_start.json").read_text()
    if model == "tucker":  # the encoder's parameters come on top of the plain TuckER's
        plain = TuckER.from_data(make_synthetic_mmkg(**TINY), dim=16)
        assert metrics["num_parameters"] > sum(p.numel() for p in plain.parameters())


def test_cli_structure_encoder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "momok_pyg.cli", "train", "--model", "tucker", "--synthetic",
         *[f"{k}={v}" for k, v in TINY.items()], "--dim", "16", "--epochs", "1", "--threads",
         "1", "--no-progress", "--structure-encoder", "rgcn", "--encoder-arg", "num_layers=1",
         "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"num_layers": 1' in (out / "config.json").read_text()
