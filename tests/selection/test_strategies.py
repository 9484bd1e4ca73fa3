"""Label selection over pooled features: random equals the sweeps' subsets, k-center spreads out, TypiClust and
ProbCover find every blob, orders are seeded and nested where claimed, and bad requests fail in one line."""

import json
import sys

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.selection import NESTED, POOLING, STRATEGIES, pool_features, select
from featcache.selection.strategies import greedy_coverage, purity_radius
from featcache.train.protocol import subset


def blobs(sizes, *, dim=2, spread=0.05, gap=10.0, seed=0) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian blobs of ``sizes`` points ``gap`` apart along the first axis: features ``[sum(sizes), dim]`` float32
    and blob labels."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((len(sizes), dim))
    centres[:, 0] = gap * np.arange(len(sizes))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return torch.tensor(x, dtype=torch.float32), labels


def noise(n=60, dim=8, seed=0) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, dim)), dtype=torch.float32)


def order(x, strategy, budget, seed=0) -> list[int]:
    return list(select(x, budget=budget, strategy=strategy, seed=seed).order)


@pytest.mark.parametrize("n,budget,seed", [(20, 5, 0), (2000, 40, 3), (7, 7, 11)])
def test_random_is_the_sweeps_nested_subset(n, budget, seed):
    picked = order(torch.zeros(n, 3), "random", budget, seed)
    assert sorted(picked) == subset(n, budget, seed).tolist()
    assert order(torch.zeros(n, 3), "random", budget - 1, seed) == picked[:-1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_orders_are_seeded_distinct_and_in_range(strategy):
    x = noise()
    first = select(x, budget=8, strategy=strategy, seed=1)
    assert first == select(x, budget=8, strategy=strategy, seed=1)
    assert len(set(first.order)) == 8 and all(0 <= i < len(x) for i in first.order)
    assert first.order != select(x, budget=8, strategy=strategy, seed=2).order
    assert json.loads(json.dumps(first.as_dict())) == first.as_dict()  # FILE.json-ready


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nested_where_claimed(strategy):
    x = noise()
    small, large = (select(x, budget=b, strategy=strategy, seed=0) for b in (10, 20))
    assert small.nested == large.nested == (strategy in NESTED)
    if small.nested:
        assert small.order == large.order[:10]
    assert NESTED == {"random", "kcenter"}


def test_kcenter_takes_one_point_of_each_far_corner_then_the_farthest():
    # Three points near each corner of a square, and one point midway along the bottom edge.
    corner = np.repeat(np.arange(4), 3)
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])[corner] + 0.01 * noise(12, 2)
    x = torch.cat([x, torch.tensor([[5.0, 0.0]])])
    for seed in range(5):
        picked = order(x, "kcenter", 5, seed)
        assert sorted(corner[picked[:4]].tolist()) == [0, 1, 2, 3], (seed, picked)
        # The fifth is the point midway: 5 from its nearest pick, while every corner point is within 0.1 of one.
        assert picked[4] == 12, (seed, picked)


def test_kcenter_second_pick_is_farthest_from_the_start():
    x = noise(40, 4)
    selection = select(x, budget=2, strategy="kcenter", seed=4)
    start, second = selection.order
    assert start == selection.params["start"]
    assert second == int((x - x[start]).norm(dim=1).argmax())


def test_kcenter_never_picks_a_row_twice_among_duplicates():
    x = torch.zeros(6, 2)
    x[3:] = 1.0
    assert sorted(order(x, "kcenter", 6)) == list(range(6))


def test_typiclust_takes_the_most_typical_point_of_each_blob_largest_first():
    sizes = [40, 30, 22, 15, 9]
    x, blob = blobs(sizes, dim=16, spread=0.3, gap=4.0)
    for seed in range(3):
        picked = order(x, "typiclust", len(sizes), seed)
        assert blob[picked].tolist() == [0, 1, 2, 3, 4], (seed, picked)
        for i in picked:  # nearer its blob's mean than most of its blob
            members = x[blob == blob[i]]
            assert (x[i] - members.mean(0)).norm() <= (members - members.mean(0)).norm(dim=1).median()


def test_typiclust_records_its_parameters():
    selection = select(noise(), budget=6, strategy="typiclust", seed=0)
    assert selection.params["k"] == 6 and selection.params["K"] == 20 and selection.params["n_init"] >= 1


def test_greedy_coverage_covers_every_blob_before_a_second_point_in_one():
    sizes = [12, 9, 7, 5]
    x, blob = blobs(sizes)
    balls = torch.cdist(x, x) < 1.0  # each ball holds its whole blob and nothing else
    picked, greedy_picks, coverage = greedy_coverage(balls, budget=6, seed=0)
    assert blob[picked[:4]].tolist() == [0, 1, 2, 3]  # the largest uncovered blob first
    assert greedy_picks == 4 and coverage == 1.0 and len(set(picked.tolist())) == 6
    for budget in (1, 3, 5):
        assert greedy_coverage(balls, budget=budget, seed=0)[0].tolist() == picked[:budget].tolist()


def test_probcover_radius_follows_the_purity_rule_and_covers_every_blob():
    sizes = [16, 14, 12, 10, 9, 8, 7, 6]
    x, blob = blobs(sizes, spread=0.2)
    # 8 blobs, budget 4: k-means with 2 * 4 clusters finds the blobs, so a ball spans a blob (and the near edge of
    # the next ones): the largest blob first, then three other blobs.
    selection = select(x, budget=4, strategy="probcover", seed=0)
    assert blob[selection.order[0]] == 0 and len(set(blob[list(selection.order)])) == 4
    dist = torch.cdist(x.double(), x.double())
    to_other_blob = dist.masked_fill(torch.as_tensor(blob[:, None] == blob[None, :]), float("inf")).min(1).values
    # The pseudo-labels are the blobs: 95 % of the balls (all but 4 of 82) stop short of another blob.
    assert selection.params["delta"] == pytest.approx(float(to_other_blob.sort().values[4]))
    assert selection.params["delta"] > dist[blob == 0][:, blob == 0].max()
    assert selection.params["clusters"] == 8 and selection.params["greedy_picks"] == 4


def test_purity_radius_is_the_largest_radius_with_enough_pure_balls():
    # On a line, labels a a a b b: each point's distance to the other label is 3, 2, 1, 1, 2.
    dist = torch.cdist(*(torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]]),) * 2)
    labels = np.array([0, 0, 0, 1, 1])
    assert purity_radius(dist, labels, alpha=1.0) == 1.0  # every ball pure: radius up to the nearest other label
    assert purity_radius(dist, labels, alpha=0.6) == 2.0  # 3 of 5 pure is enough


def test_pooling_is_the_grid_mean_at_unit_norm_and_recorded():
    grid = torch.rand(5, 3, 2, 4)
    pooled = pool_features(grid)
    assert pooled.shape == (5, 3) and torch.allclose(pooled.norm(dim=1), torch.ones(5))
    assert torch.allclose(pooled, grid.mean((2, 3)) / grid.mean((2, 3)).norm(dim=1, keepdim=True))
    assert select(grid, budget=2, strategy="kcenter", seed=0).params["pooling"] == POOLING
    assert select(pooled, budget=2, strategy="kcenter", seed=0).params["pooling"] == "as given"


@pytest.mark.parametrize(
    "budget,strategy,seed,error,words",
    [
        (61, "kcenter", 0, FeatcacheError, "--budget 61 is larger than the 60 samples"),
        (0, "random", 0, OptionError, "--budget 0 must be at least 1"),
        (3, "coreset", 0, OptionError, "--strategy coreset is not one of random, kcenter, typiclust, probcover"),
        (3, "random", -1, OptionError, "--seed -1 must be 0 or more"),
    ],
)
def test_bad_requests_fail_in_one_line(budget, strategy, seed, error, words):
    with pytest.raises(error) as caught:
        select(noise(), budget=budget, strategy=strategy, seed=seed)
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("strategy", ["typiclust", "probcover"])
def test_missing_scikit_learn_names_the_extra(strategy, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(FeatcacheError) as caught:
        select(noise(), budget=3, strategy=strategy, seed=0)
    assert "pip install 'featcache[select]'" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_picks_the_cpu_order(strategy):
    x = torch.tensor(np.random.default_rng(0).standard_normal((300, 6, 4, 4)), dtype=torch.float32)
    on_cpu = select(x, budget=12, strategy=strategy, seed=0)
    on_cuda = select(x.cuda(), budget=12, strategy=strategy, seed=0)
    assert on_cuda.order == on_cpu.order
