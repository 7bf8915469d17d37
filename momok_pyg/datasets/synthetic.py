r"""A small, deterministic synthetic multi-modal knowledge graph with a planted signal.

:func:`make_synthetic_mmkg` generates one MMKG (a :class:`~torch_geometric.data.HeteroData`
built through :func:`~momok_pyg.datasets.schema.build_mmkg`) from a seed;
:class:`SyntheticMMKG` wraps it as an :class:`~torch_geometric.data.InMemoryDataset`. It is the
offline default of the README demo, the command line interface and the tests.

The graph is made so that the image and text features reveal what the structure alone
cannot: some entities are *cold* (no training triple at all), so a structure-only model
(e.g. TuckER) cannot place them, while their features tell which latent cell they belong to,
and the cell (with the relation) determines the plausible tails.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset

from .schema import ENTITY, build_mmkg

#: Bumped whenever the generative process changes, so cached files are regenerated.
GENERATOR_VERSION = 1

#: Ambient (full-rank) noise added to every feature after the linear map.
_AMBIENT_STD = 0.1

_DEFAULTS: Dict[str, Any] = dict(
    num_entities=1500,
    num_relations=12,
    num_groups=25,
    num_attributes=6,
    num_triples=20000,
    image_dim=64,
    text_dim=48,
    latent_dim=16,
    image_noise=1.0,
    text_noise=1.0,
    popularity=1.0,
    cold_ratio=0.1,
    cold_max_triples=4,
    cold_train_triples=0,
    missing_ratio=0.05,
    valid_ratio=0.05,
    test_ratio=0.05,
    seed=0,
)


def _number(key: str, value: Any, integer: bool, low: float, high: float = math.inf) -> Any:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and low <= value <= high
    if integer:
        ok = ok and int(value) == value
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"make_synthetic_mmkg: expected '{key}' to be {kind} {bound}, got "
                         f"{value!r}")
    return int(value) if integer else float(value)


def _check_params(p: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(p) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"make_synthetic_mmkg: unknown argument(s) {unknown}; expected some of "
                        f"{sorted(_DEFAULTS)}")
    p = {**_DEFAULTS, **p}
    for k in ("num_entities", "num_relations", "num_groups", "num_attributes", "num_triples",
              "image_dim", "text_dim", "latent_dim"):
        p[k] = _number(k, p[k], integer=True, low=1)
    p["cold_max_triples"] = _number("cold_max_triples", p["cold_max_triples"], True, 0)
    p["cold_train_triples"] = _number("cold_train_triples", p["cold_train_triples"], True, 0)
    p["seed"] = _number("seed", p["seed"], integer=True, low=0)
    for k in ("image_noise", "text_noise", "popularity"):
        p[k] = _number(k, p[k], integer=False, low=0)
    for k in ("cold_ratio", "missing_ratio", "valid_ratio", "test_ratio"):
        p[k] = _number(k, p[k], integer=False, low=0, high=1)
    if p["valid_ratio"] + p["test_ratio"] >= 1.0:
        raise ValueError(f"make_synthetic_mmkg: expected valid_ratio + test_ratio < 1, got "
                         f"{p['valid_ratio']} + {p['test_ratio']}")
    cells = p["num_groups"] * p["num_attributes"]
    if p["num_entities"] < 2 * cells:
        raise ValueError(
            f"make_synthetic_mmkg: expected num_entities >= 2 * num_groups * num_attributes "
            f"= {2 * cells} (at least two entities per latent cell), got {p['num_entities']}")
    return p


def _sample_in_cell(cell: Tensor, weight: Tensor, target_cell: Tensor, num_cells: int,
                    gen: torch.Generator) -> Tensor:
    r"""For every entry of :obj:`target_cell` draws one entity of that cell with probability
    proportional to :obj:`weight` (inverse-CDF sampling on the cell-sorted cumulative
    weights)."""
    n = cell.numel()
    order = torch.argsort(cell * n + torch.arange(n))  # stable sort by cell
    cum = torch.cumsum(weight[order].double(), dim=0)
    count = torch.bincount(cell, minlength=num_cells)
    end = torch.cumsum(count, dim=0)
    start = end - count
    before = torch.cat([cum.new_zeros(1), cum])[start]  # cumulative weight before each cell
    total = cum[end - 1] - before
    u = torch.rand(target_cell.numel(), generator=gen, dtype=torch.float64)
    pos = torch.searchsorted(cum, before[target_cell] + u * total[target_cell], right=True)
    pos = torch.minimum(torch.maximum(pos, start[target_cell]), end[target_cell] - 1)
    return order[pos]


def _cap_cold(triples: Tensor, cold: Tensor, cap: int, train_cap: int,
              gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    r"""Goes through the triples touching cold entities in a random order and keeps one
    while every cold entity in it has fewer than :obj:`cap` kept triples; a kept triple goes
    to train while every cold entity in it has fewer than :obj:`train_cap` training triples.
    Returns the (train, held-out) rows."""
    perm = torch.randperm(triples.size(0), generator=gen)
    count: Dict[int, int] = {}
    count_train: Dict[int, int] = {}
    keep: List[int] = []
    train: List[int] = []
    for i, (h, t) in zip(perm.tolist(), triples[perm][:, [0, 2]].tolist()):
        ends = {e for e in (h, t) if bool(cold[e])}
        if all(count.get(e, 0) < cap for e in ends):
            for e in ends:
                count[e] = count.get(e, 0) + 1
            if all(count_train.get(e, 0) < train_cap for e in ends):
                train.append(i)
                for e in ends:
                    count_train[e] = count_train.get(e, 0) + 1
            else:
                keep.append(i)
    out = [triples[torch.tensor(sorted(x), dtype=torch.long)].reshape(-1, 3)
           for x in (train, keep)]
    return out[0], out[1]


def _modality(centroid: Tensor, noise: float, dim: int, gen: torch.Generator) -> Tensor:
    n, k = centroid.shape
    z = centroid + noise * torch.randn(n, k, generator=gen)
    proj = torch.randn(k, dim, generator=gen) / math.sqrt(k)
    return z @ proj + _AMBIENT_STD * torch.randn(n, dim, generator=gen)


def make_synthetic_mmkg(
    num_entities: int = 1500,
    num_relations: int = 12,
    num_groups: int = 25,
    num_attributes: int = 6,
    num_triples: int = 20000,
    image_dim: int = 64,
    text_dim: int = 48,
    latent_dim: int = 16,
    image_noise: float = 1.0,
    text_noise: float = 1.0,
    popularity: float = 1.0,
    cold_ratio: float = 0.1,
    cold_max_triples: int = 4,
    cold_train_triples: int = 0,
    missing_ratio: float = 0.05,
    valid_ratio: float = 0.05,
    test_ratio: float = 0.05,
    seed: int = 0,
) -> HeteroData:
    r"""Generates a synthetic MMKG whose image/text features carry a planted signal.

    Every random draw comes from one :class:`torch.Generator` seeded with :obj:`seed`, in a
    fixed order on the CPU: the same arguments give bit-identical tensors, and the global
    random state is left untouched.

    **Latent cells.** Entity :math:`e \in \{0,\dots,N-1\}` gets a group
    :math:`g_e \in \{0,\dots,G-1\}` and an attribute :math:`a_e \in \{0,\dots,A-1\}`
    (balanced, by a random permutation), i.e. a cell :math:`c_e = (g_e, a_e)`, and a
    popularity :math:`w_e = \exp(s\,u_e)`, :math:`u_e \sim \mathcal{N}(0, 1)`
    (:math:`s` = :obj:`popularity`; :math:`s = 0` is uniform).

    **Relations.** Relation :math:`r` is a pair of random permutations
    :math:`\pi_r` of the groups and :math:`\sigma_r` of the attributes; it maps cell
    :math:`(g, a)` to cell :math:`(\pi_r(g), \sigma_r(a))`. Since both are permutations, the
    inverse relation maps cells to cells as well, so head and tail prediction are alike.

    **Triples.** :math:`M` = :obj:`num_triples` draws

    .. math::
        h \sim \mathcal{U}\{0..N-1\},\quad r \sim \mathcal{U}\{0..R-1\},\quad
        P(t = e \mid h, r) \propto w_e \,
        \mathbb{1}\left[c_e = (\pi_r(g_h), \sigma_r(a_h))\right],

    dropping self-loops :math:`t = h` and duplicates. The tail is thus determined by
    (head cell, relation) up to the popularity inside the target cell.

    **Cold entities.** A fraction :obj:`cold_ratio` of the entities is *cold* (long-tail):
    going through their triples in a random order, a cold entity keeps at most
    :obj:`cold_max_triples` of them (the others are dropped) and at most
    :obj:`cold_train_triples` of the kept ones go to train (default 0: cold entities have no
    training triple at all, the structure says nothing about them while their features
    reveal their cell). The other kept triples touching a cold entity are split evenly
    between valid and test. The remaining (*warm*) triples are split at random into
    train/valid/test with fractions
    :math:`(1 - p_{\text{valid}} - p_{\text{test}}, p_{\text{valid}}, p_{\text{test}})`.
    Valid and test are thus drawn from the same process. Every relation is guaranteed to
    occur in train (a warm valid/test triple is moved there if needed).

    **Features.** With group centroids :math:`\mu_g \sim \mathcal{N}(0, I_k)`, attribute
    centroids :math:`\nu_a \sim \mathcal{N}(0, I_k)` (:math:`k` = :obj:`latent_dim`), random
    maps :math:`P_{\text{img}} \in \mathbb{R}^{k \times d_{\text{img}}}`,
    :math:`P_{\text{txt}} \in \mathbb{R}^{k \times d_{\text{txt}}}` with
    :math:`\mathcal{N}(0, 1/k)` entries and independent standard normal
    :math:`\epsilon, \xi`:

    .. math::
        \mathbf{x}^{\text{img}}_e &= (\mu_{g_e} + \sigma_{\text{img}}\,\epsilon_e)\,
        P_{\text{img}} + 0.1\,\xi_e, \\
        \mathbf{x}^{\text{txt}}_e &= (\nu_{a_e} + \sigma_{\text{txt}}\,\epsilon'_e)\,
        P_{\text{txt}} + 0.1\,\xi'_e.

    The image is a noisy view of the group, the text a noisy view of the attribute: each
    modality alone narrows the target cell down, both together pin it.

    **Missing modalities.** For each modality independently,
    :math:`\mathrm{round}(p_{\text{miss}} N)` random entities have it missing (mask
    ``False``, zero row).

    **What the signal amounts to** (defaults, seed 0): 13061/1016/1015 train/valid/test
    triples, 28% of the test triples touch a cold entity. A nearest-centroid probe fit on
    warm entities recovers the group of cold entities from the image in 80% of cases
    (chance 4%) and their attribute from the text in 93% (chance 17%) (both checked in
    ``tests/test_synthetic.py``). A Bayes scorer that knows the generative process and infers
    each entity's cell from the training graph alone reaches a filtered test MRR of 0.45
    (0.01 on triples touching a cold entity); multiplying in the feature likelihood raises it
    to 0.55 (0.39 on those triples). The whole planted gain is thus on cold entities; warm
    ones are pinned by their edges. A model with free per-entity parameters trained 1-N sees
    cold entities only as negatives and pushes them down, so it reaps this gain only as far
    as its features cannot be overridden per entity.

    Besides the schema (:mod:`momok_pyg.datasets.schema`), the returned data stores the
    ground truth for analysis (models must not read it): ``data["entity"].group``,
    ``.attribute``, ``.popularity``, ``.is_cold`` and ``data.relation_group_map``
    ``[R, G]`` (:math:`\pi_r`), ``data.relation_attribute_map`` ``[R, A]``
    (:math:`\sigma_r`).

    Args:
        num_entities (int): :math:`N`. Must be at least :math:`2GA`.
        num_relations (int): :math:`R`.
        num_groups (int): :math:`G`, revealed by the image.
        num_attributes (int): :math:`A`, revealed by the text.
        num_triples (int): :math:`M`, the number of draws (before dropping duplicates and
            the surplus triples of cold entities).
        image_dim, text_dim (int): Feature dimensions :math:`d_{\text{img}}, d_{\text{txt}}`.
        latent_dim (int): :math:`k`.
        image_noise, text_noise (float): :math:`\sigma_{\text{img}}, \sigma_{\text{txt}}`
            (latent noise; the centroids have unit variance per dimension).
        popularity (float): :math:`s`, spread of the popularity inside a cell.
        cold_ratio (float): Fraction of cold entities.
        cold_max_triples (int): Triples kept per cold entity.
        cold_train_triples (int): Training triples allowed per cold entity (0: none).
        missing_ratio (float): Fraction of entities missing each modality.
        valid_ratio, test_ratio (float): Fractions of warm triples in valid and test.
        seed (int): Random seed.
    """
    p = _check_params(dict(
        num_entities=num_entities, num_relations=num_relations, num_groups=num_groups,
        num_attributes=num_attributes, num_triples=num_triples, image_dim=image_dim,
        text_dim=text_dim, latent_dim=latent_dim, image_noise=image_noise,
        text_noise=text_noise, popularity=popularity, cold_ratio=cold_ratio,
        cold_max_triples=cold_max_triples, cold_train_triples=cold_train_triples,
        missing_ratio=missing_ratio,
        valid_ratio=valid_ratio, test_ratio=test_ratio, seed=seed))
    N, R, G, A = p["num_entities"], p["num_relations"], p["num_groups"], p["num_attributes"]
    gen = torch.Generator().manual_seed(p["seed"])

    # Latent cells and popularity.
    perm = torch.randperm(N, generator=gen)
    group = perm % G
    attribute = (perm // G) % A
    cell = group * A + attribute
    weight = torch.exp(p["popularity"] * torch.randn(N, generator=gen))

    # Relations: one permutation of groups and one of attributes each.
    group_map = torch.stack([torch.randperm(G, generator=gen) for _ in range(R)])
    attribute_map = torch.stack([torch.randperm(A, generator=gen) for _ in range(R)])

    # Triples.
    M = p["num_triples"]
    h = torch.randint(N, (M, ), generator=gen)
    r = torch.randint(R, (M, ), generator=gen)
    target = group_map[r, group[h]] * A + attribute_map[r, attribute[h]]
    t = _sample_in_cell(cell, weight, target, G * A, gen)
    code = (h * R + r) * N + t
    code = torch.unique(code[h != t])  # sorted, duplicates dropped
    triples = torch.stack([code // (R * N), (code // N) % R, code % N], dim=1)

    # Cold entities.
    n_cold = round(p["cold_ratio"] * N)
    is_cold = torch.zeros(N, dtype=torch.bool)
    is_cold[torch.randperm(N, generator=gen)[:n_cold]] = True
    touches = is_cold[triples[:, 0]] | is_cold[triples[:, 2]]
    cold_train, cold_triples = _cap_cold(triples[touches], is_cold, p["cold_max_triples"],
                                         p["cold_train_triples"], gen)
    warm_triples = triples[~touches]
    cold_triples = cold_triples[torch.randperm(cold_triples.size(0), generator=gen)]
    half = (cold_triples.size(0) + 1) // 2
    warm_triples = warm_triples[torch.randperm(warm_triples.size(0), generator=gen)]
    n_valid = round(p["valid_ratio"] * warm_triples.size(0))
    n_test = round(p["test_ratio"] * warm_triples.size(0))
    train = torch.cat([warm_triples[n_valid + n_test:], cold_train])
    valid = torch.cat([warm_triples[:n_valid], cold_triples[:half]])
    test = torch.cat([warm_triples[n_valid:n_valid + n_test], cold_triples[half:]])

    # Every relation must occur in train: move one warm valid/test triple if not.
    for rel in range(R):
        if bool((train[:, 1] == rel).any()):
            continue
        for name, split in (("valid", valid), ("test", test)):
            ok = (split[:, 1] == rel) & ~is_cold[split[:, 0]] & ~is_cold[split[:, 2]]
            if bool(ok.any()):
                i = int(ok.nonzero()[0])
                train = torch.cat([train, split[i:i + 1]])
                split = torch.cat([split[:i], split[i + 1:]])
                valid, test = (split, test) if name == "valid" else (valid, split)
                break
        else:
            raise ValueError(
                f"make_synthetic_mmkg: relation {rel} has no triple between warm entities; "
                f"expected more triples per relation (raise num_triples={M} or lower "
                f"cold_ratio={p['cold_ratio']})")
    for name, split in (("train", train), ("valid", valid), ("test", test)):
        if split.size(0) == 0:
            raise ValueError(f"make_synthetic_mmkg: the {name} split is empty; expected more "
                             f"triples (raise num_triples={M} or the split ratios)")

    # Features: image <- group, text <- attribute.
    k = p["latent_dim"]
    group_centroid = torch.randn(G, k, generator=gen)
    attribute_centroid = torch.randn(A, k, generator=gen)
    image = _modality(group_centroid[group], p["image_noise"], p["image_dim"], gen)
    text = _modality(attribute_centroid[attribute], p["text_noise"], p["text_dim"], gen)
    masks = {}
    n_miss = round(p["missing_ratio"] * N)
    for m in ("image", "text"):
        mask = torch.ones(N, dtype=torch.bool)
        mask[torch.randperm(N, generator=gen)[:n_miss]] = False
        masks[m] = mask

    data = build_mmkg(
        N, R, {"train": train, "valid": valid, "test": test},
        features={"image": image, "text": text}, masks=masks,
        entity_names=[f"synthetic:e{i}" for i in range(N)],
        relation_names=[f"synthetic:r{i}" for i in range(R)], name="synthetic")
    data[ENTITY].group = group
    data[ENTITY].attribute = attribute
    data[ENTITY].popularity = weight
    data[ENTITY].is_cold = is_cold
    data.relation_group_map = group_map
    data.relation_attribute_map = attribute_map
    return data


class SyntheticMMKG(InMemoryDataset):
    r"""The synthetic MMKG of :func:`make_synthetic_mmkg` as a one-graph
    :class:`~torch_geometric.data.InMemoryDataset`.

    .. code-block:: python

        from momok_pyg.datasets.synthetic import SyntheticMMKG

        data = SyntheticMMKG()[0]                      # generated in memory
        data = SyntheticMMKG("data/synthetic", seed=1)[0]  # cached on disk

    Args:
        root (str, optional): Root directory. If :obj:`None` (default), the graph is generated
            in memory and nothing is written. Otherwise it is saved to
            ``<root>/processed/synthetic_n{N}_r{R}_seed{seed}_{hash}.pt`` (the hash covers
            every generator argument and :data:`GENERATOR_VERSION`) and read from there on
            later calls.
        transform (callable, optional): Applied to the data on every access.
        pre_transform (callable, optional): Applied once before saving.
        force_reload (bool): Regenerate even if the processed file exists.
        log (bool): Print progress when processing.
        **kwargs: Arguments of :func:`make_synthetic_mmkg` (defaults otherwise).
    """
    def __init__(
        self,
        root: Optional[str] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
        **kwargs: Any,
    ) -> None:
        self.params: Dict[str, Any] = _check_params(kwargs)
        # Without a root, PyG would still process into "???/processed" under the working
        # directory; ``has_process`` below turns that off.
        self._in_memory = root is None
        super().__init__(root, transform, pre_transform, log=log, force_reload=force_reload)
        if self._in_memory:
            data = make_synthetic_mmkg(**self.params)
            if pre_transform is not None:
                data = pre_transform(data)
            self.data, self.slices = self.collate([data])
        else:
            self.load(self.processed_paths[0], data_cls=HeteroData)

    @property
    def has_process(self) -> bool:
        return not self._in_memory

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_file_names(self) -> List[str]:
        p = self.params
        digest = hashlib.sha1(repr((GENERATOR_VERSION, sorted(p.items()))).encode())
        return [f"synthetic_n{p['num_entities']}_r{p['num_relations']}_seed{p['seed']}_"
                f"{digest.hexdigest()[:10]}.pt"]

    def process(self) -> None:
        data = make_synthetic_mmkg(**self.params)
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        self.save([data], self.processed_paths[0])

    def __repr__(self) -> str:
        p = self.params
        return (f"{self.__class__.__name__}(num_entities={p['num_entities']}, "
                f"num_relations={p['num_relations']}, seed={p['seed']})")


__all__ = ["make_synthetic_mmkg", "SyntheticMMKG", "GENERATOR_VERSION"]
