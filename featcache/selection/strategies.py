"""The four selection strategies: pure functions of a pooled feature matrix ``x`` ``[n, d]`` (float, CPU or CUDA).

Each takes ``(x, *, budget, seed)`` and returns ``(order, params)``: ``order`` the chosen rows of ``x``, an int64
numpy array ``[budget]`` in the order chosen, and ``params`` a dict of the parameters the strategy used (those
derived from the data too, such as ProbCover's radius). Distances are Euclidean, computed by torch on ``x``'s
device in float64, so that the CPU and CUDA pick the same rows; on L2-normalised features (`pool_features`) they
rank pairs as cosine distances do. Budget and seed checks are `featcache.selection.select`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from featcache.core.errors import FeatcacheError

#: k-means restarts (scikit-learn's ``n_init``) of TypiClust, whose picks are its clusters': the best of 3 by inertia.
#: The paper's code used scikit-learn's old default of 10; 3 keeps 2,000 ViT-B features within seconds.
TYPICLUST_N_INIT = 3
#: ProbCover's k-means only sets the radius: one k-means++ run (scikit-learn's own default), a third of the time.
PROBCOVER_N_INIT = 1
#: TypiClust's neighbours for typicality: K = min(TYPICLUST_K, cluster size - 1), as the paper's K = 20.
TYPICLUST_K = 20
#: ProbCover's purity threshold: the largest radius whose balls are pure for this share of the points.
PROBCOVER_ALPHA = 0.95
INSTALL = "pip install 'featcache[select]'"


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """The int64 permutation ``[n]`` whose sorted first entries `featcache.train.protocol.subset` returns (salt 0)."""
    # The same generator as protocol.subset; tests/selection checks that they agree.
    return np.random.default_rng(np.random.SeedSequence([seed, 0])).permutation(n).astype(np.int64)


def random_order(x: torch.Tensor, *, budget: int, seed: int) -> tuple[np.ndarray, dict]:
    """The first ``budget`` entries of `seeded_permutation`: ``sorted(order)`` equals ``subset(n, budget, seed)``,
    so the runs pair with the sweeps' random subsets, and the order is nested across budgets. Only ``len(x)`` is
    used."""
    return seeded_permutation(len(x), seed)[:budget], {"salt": 0}


def kcenter(x: torch.Tensor, *, budget: int, seed: int) -> tuple[np.ndarray, dict]:
    """k-center greedy (Sener & Savarese 2018): a seeded random start, then each time the point farthest from all
    chosen so far. Nested across budgets: the order for 10 is the first 10 of the order for 20."""
    xd = x.detach().to(torch.float64)
    norms = xd.pow(2).sum(1)

    def squared_distances(i: int) -> torch.Tensor:  # [n] to row i; one matrix-vector product
        return (norms - 2 * (xd @ xd[i]) + norms[i]).clamp_(min=0)

    start = int(np.random.default_rng(seed).integers(len(x)))
    order = [start]
    nearest = squared_distances(start)  # [n] squared distance to the nearest chosen point
    nearest[start] = -1.0  # never chosen twice, even among duplicated rows
    for _ in range(budget - 1):
        pick = int(nearest.argmax())
        order.append(pick)
        nearest = torch.minimum(nearest, squared_distances(pick))
        nearest[pick] = -1.0
    return np.asarray(order, np.int64), {"start": start}


def kmeans_labels(x: torch.Tensor, *, k: int, seed: int, n_init: int) -> np.ndarray:
    """Cluster labels ``[n]`` of scikit-learn's k-means (k-means++ start, ``n_init`` restarts, ``random_state=seed``),
    run on the CPU in float64 (twice as fast as float32 here: scikit-learn upcasts float32 distances in chunks),
    with one BLAS thread."""
    try:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError:
        raise FeatcacheError(f"scikit-learn is needed for TypiClust and ProbCover: {INSTALL}") from None
    points = x.detach().to("cpu", torch.float64).numpy()
    # k-means++ spends its time in thin products (n x d by d x a few candidates); BLAS threads only contend on
    # them: one BLAS thread measured 3-6x faster on 2 cores (k-means' own OpenMP threads are not limited).
    with threadpool_limits(limits=1, user_api="blas"):
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(points).labels_


def mean_knn_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's mean distance ``[n]`` (float64) to its ``k`` nearest other rows of ``x`` ``[n, d]``."""
    dist = torch.cdist(x, x).fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=False).values.mean(1)


def typiclust(x: torch.Tensor, *, budget: int, seed: int) -> tuple[np.ndarray, dict]:
    """TypiClust (Hacohen et al. 2022): k-means with k = budget; from each cluster, largest first, its most typical
    point, typicality = 1 / mean distance to the K = min(20, cluster size - 1) nearest points of its cluster.

    Should k-means leave fewer clusters than the budget (duplicated rows), the next picks come again from the
    clusters with the fewest picks, largest first, as in the paper's code. Not nested across budgets: k changes
    the clustering, so the order for 10 is not a prefix of the order for 20.
    """
    xd = x.detach().to(torch.float64)
    labels = kmeans_labels(x, k=budget, seed=seed, n_init=TYPICLUST_N_INIT)
    sizes = np.bincount(labels, minlength=budget)
    spread = np.zeros(len(x))  # mean neighbour distance: the smallest is the most typical
    for c in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(labels == c)
        neighbours = min(TYPICLUST_K, len(members) - 1)
        spread[members] = mean_knn_distance(xd[members], neighbours).cpu().numpy()
    picks = np.zeros(budget, np.int64)
    free = np.ones(len(x), bool)
    order = []
    for _ in range(budget):
        open_clusters = np.unique(labels[free])
        c = min(open_clusters, key=lambda c: (picks[c], -sizes[c], c))
        candidates = np.flatnonzero(free & (labels == c))
        pick = int(candidates[spread[candidates].argmin()])
        order.append(pick)
        picks[c] += 1
        free[pick] = False
    return np.asarray(order, np.int64), {"k": budget, "K": TYPICLUST_K, "n_init": TYPICLUST_N_INIT}


def purity_radius(dist: torch.Tensor, labels: np.ndarray, alpha: float) -> float:
    """The largest radius ``delta`` whose open balls ``{j: dist[i, j] < delta}`` hold one k-means label only for a
    share ``alpha`` or more of the points ``i`` (ProbCover's purity rule), from the pairwise ``dist`` ``[n, n]``.

    Point ``i``'s ball is pure exactly while ``delta <= r_i``, its distance to the nearest point of another label;
    so the answer is the ``m``-th smallest ``r_i``, ``m = floor((1 - alpha) * n)``: no search over a grid.
    """
    lab = torch.as_tensor(labels, device=dist.device)
    other = dist.masked_fill(lab[:, None] == lab[None, :], float("inf"))
    r = other.min(1).values.sort().values
    return float(r[int((1 - alpha) * len(r))])


def greedy_coverage(balls: torch.Tensor, *, budget: int, seed: int) -> tuple[np.ndarray, int, float]:
    """Greedy maximum coverage: ``budget`` picks of rows of ``balls`` ``[n, n]`` (bool, ``balls[i, j]``: i covers
    j), each the row covering the most points not yet covered; its points then count as covered (the edges into
    them are dropped). Ties, and the picks left once every point is covered, go by `seeded_permutation`.

    Returns the order (int64 ``[budget]``), how many picks covered new points, and the share of points covered.
    Nested: the order for a smaller budget is the prefix of this one.
    """
    n, device = len(balls), balls.device
    priority = torch.empty(n, dtype=torch.int64, device=device)  # distinct; the highest wins a tie
    priority[torch.as_tensor(seeded_permutation(n, seed), device=device)] = torch.arange(n - 1, -1, -1, device=device)
    edges = balls.to(torch.float32)  # counts up to 2**24 are exact
    uncovered = torch.ones(n, dtype=torch.bool, device=device)
    chosen = torch.zeros(n, dtype=torch.bool, device=device)
    order, greedy_picks = [], 0
    for _ in range(budget):
        degree = (edges @ uncovered.to(torch.float32)).to(torch.int64)  # [n] points not yet covered in each ball
        pick = int((degree * n + priority).masked_fill(chosen, -1).argmax())
        greedy_picks += int(degree[pick] > 0)
        order.append(pick)
        chosen[pick] = True
        uncovered &= ~balls[pick]
    return np.asarray(order, np.int64), greedy_picks, (n - int(uncovered.sum())) / n


def probcover(x: torch.Tensor, *, budget: int, seed: int) -> tuple[np.ndarray, dict]:
    """ProbCover (Yehuda et al. 2022): `greedy_coverage` of the balls of radius ``delta`` around the points.

    ``delta`` is the paper's: the largest radius with purity >= 0.95 (`purity_radius`) of k-means pseudo-labels,
    here with k = min(2 * budget, n) clusters, since segmentation images have no classes to count. Ties go by the
    seed, as the paper's code randomises them; ``params["greedy_picks"]`` counts the picks that covered new
    points (the rest, once all is covered, follow the seeded permutation) and ``params["coverage"]`` the share
    covered. For a fixed ``delta`` the order is nested; across budgets it is not, as ``delta`` depends on the
    budget. Memory: ``[n, n]`` matrices of distances (float64) and balls (bool, and float32 for the counts), about
    50 MB for n = 2,000.
    """
    xd = x.detach().to(torch.float64)
    clusters = min(2 * budget, len(x))
    dist = torch.cdist(xd, xd)
    labels = kmeans_labels(x, k=clusters, seed=seed, n_init=PROBCOVER_N_INIT)
    delta = purity_radius(dist, labels, PROBCOVER_ALPHA)
    order, greedy_picks, coverage = greedy_coverage(dist < delta, budget=budget, seed=seed)
    params = {"delta": delta, "alpha": PROBCOVER_ALPHA, "clusters": clusters, "n_init": PROBCOVER_N_INIT}
    return order, {**params, "coverage": coverage, "greedy_picks": greedy_picks}


#: Strategy name -> function ``(x, *, budget, seed) -> (order, params)``.
STRATEGIES = {"random": random_order, "kcenter": kcenter, "typiclust": typiclust, "probcover": probcover}
#: Strategies whose order for a smaller budget is the prefix of the order for a larger one (same seed).
NESTED = frozenset({"random", "kcenter"})
