"""One entry point: pool the cached features if needed, check the request, run a strategy, return a `Selection`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featcache.core.errors import FeatcacheError, check_at_least, check_choice
from featcache.selection.strategies import NESTED, STRATEGIES

#: How `pool_features` turns one image's feature grid into the vector the strategies compare.
POOLING = "mean over the patch grid, L2-normalised"


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """One vector per image: ``[n, C, h, w]`` features (one view, any float dtype) -> ``[n, C]`` float32, the mean
    over the ``h x w`` patch grid scaled to unit L2 norm, on the input's device.

    Unit norm makes Euclidean distances rank pairs as cosine distances do, the geometry of self-supervised features
    that TypiClust and ProbCover use (both papers L2-normalise).
    """
    if features.ndim != 4:
        raise ValueError(f"expected features [n, C, h, w], got shape {tuple(features.shape)}")
    return F.normalize(features.float().mean(dim=(2, 3)), dim=1)


@dataclass(frozen=True)
class Selection:
    """The rows a strategy chose and how.

    ``order``: row positions into the feature matrix, in the order chosen (length ``budget``). ``params``: the
    strategy's parameters, those derived from the data too (ProbCover's ``delta``), and ``pooling``. ``nested``:
    whether, for this seed, the order for a smaller budget is the prefix of this one.
    """

    strategy: str
    budget: int
    seed: int
    order: tuple[int, ...]
    params: dict[str, Any]
    nested: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {**asdict(self), "order": list(self.order)}


def select(features: torch.Tensor, *, budget: int, strategy: str, seed: int) -> Selection:
    """Choose ``budget`` rows of ``features`` with ``strategy`` (one of `STRATEGIES`), seeded by ``seed``.

    ``features``: ``[n, d]`` vectors, used as they are, or ``[n, C, h, w]`` feature grids, pooled first by
    `pool_features`; on the CPU or CUDA. One-line errors for an unknown strategy, a budget below 1 or above ``n``,
    a negative seed, and scikit-learn missing for the strategies that cluster.
    """
    check_choice("--strategy", strategy, STRATEGIES)
    check_at_least("--budget", budget, 1)
    check_at_least("--seed", seed, 0)
    if features.ndim == 4:
        x, pooling = pool_features(features), POOLING
    elif features.ndim == 2:
        x, pooling = features, "as given"
    else:
        raise ValueError(f"expected features [n, d] or [n, C, h, w], got shape {tuple(features.shape)}")
    if budget > len(x):
        raise FeatcacheError(f"--budget {budget} is larger than the {len(x)} samples to choose from; ask for fewer")
    order, params = STRATEGIES[strategy](x, budget=budget, seed=seed)
    return Selection(
        strategy=strategy,
        budget=budget,
        seed=seed,
        order=tuple(int(i) for i in np.asarray(order)),
        params={**params, "pooling": pooling},
        nested=strategy in NESTED,
    )
