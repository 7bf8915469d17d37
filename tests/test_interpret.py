"""Per-relation gate and fusion statistics (Fig. 5 / Table 4) against a query-by-query loop."""
import math

import torch

from momok_pyg.datasets.schema import get_triples
from momok_pyg.datasets.synthetic import make_synthetic_mmkg
from momok_pyg.interpret import gate_statistics, relation_fusion_weights
from momok_pyg.nn import MoMoK


def test_gate_statistics_are_per_relation_means_of_the_forward_outputs(single_thread):
    data = make_synthetic_mmkg(num_entities=300, num_triples=1500, num_relations=5, num_groups=6,
                               num_attributes=4)
    torch.manual_seed(0)
    model = MoMoK.from_data(data, dim=8)
    stats = gate_statistics(model, data, "test", batch_size=7)
    R = data.num_relations
    triples = get_triples(data, "test")
    model.eval()
    sums = {r: [] for r in range(2 * R)}
    with torch.no_grad():
        for h, r, t in triples.tolist():
            for head, rel in ((h, r), (t, r + R)):
                out = model(torch.tensor([head]), torch.tensor([rel]))
                sums[rel].append((out.gates, out.fusion_weights[0]))
    assert stats["relations"][:R] == list(data.relation_names)
    assert stats["relations"][R] == f"{data.relation_names[0]} (inverse)"
    for rel in range(2 * R):
        assert stats["count"][rel] == len(sums[rel])
        if not sums[rel]:
            assert all(math.isnan(x) for x in stats["fusion"][rel])
            continue
        fusion = torch.stack([f for _, f in sums[rel]]).double().mean(0)
        assert torch.allclose(torch.tensor(stats["fusion"][rel], dtype=torch.float64), fusion,
                              atol=1e-6)
        for m in model.expert_modalities:
            g = torch.cat([gates[m] for gates, _ in sums[rel]]).double().mean(0)
            assert torch.allclose(torch.tensor(stats["gates"][m][rel], dtype=torch.float64), g,
                                  atol=1e-6)
            assert abs(sum(stats["gates"][m][rel]) - 1.0) < 1e-6
    beta = relation_fusion_weights(model)
    assert len(beta) == 2 * R and len(beta[0]) == len(stats["fusion_modalities"])
    assert all(abs(sum(row) - 1.0) < 1e-5 for row in beta)
