"""A store's training split as the candidates of a selection: its identity-view features pooled per image on the
device, and a strategy's choice among them as store rows and ids."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import synchronize
from featcache.selection.select import POOLING, Selection, pool_features, select
from featcache.store.feature_store import FeatureStore

#: Training rows read and pooled at a time: ViT-B features of 256 images at 224 px are 77 MB in float16, so the
#: pooled matrix is built without ever holding the whole split's grids.
READ_BLOCK = 256
#: What the strategies compare: the identity view (flips are augmentation, not other images).
VIEW = "identity"


@dataclass
class Candidates:
    """The training split of a store as selection candidates.

    ``rows``: the store rows ``[n]`` (ascending); ``ids``: their ids; ``x``: their pooled features ``[n, L*C]``
    float32 (`pool_features`) on the device; ``layers``: the blocks read (1-based); ``seconds``: the wall time of
    reading and pooling them (device synchronised), kept apart from the selection's own.
    """

    store: str
    rows: np.ndarray
    ids: list[str]
    x: torch.Tensor
    layers: list[int]
    seconds: float


def training_candidates(
    store: FeatureStore, device: torch.device, *, layers: Sequence[int] | None = None
) -> Candidates:
    """Read the identity-view features of the store's training split, blocks ``layers`` (None: every stored
    block), and pool them per image on ``device``; refuses, in one line, a store without a training split."""
    rows = store.indices("train")
    if len(rows) == 0:
        splits = ", ".join(f"{s} {int((store.splits == s).sum())}" for s in ("val", "test"))
        raise FeatcacheError(
            f"{store.path} has no training split to choose from ({splits}); extract a dataset with training "
            "images, e.g. `featcache extract DATA --out STORE` on a folder with a training split"
        )
    positions = store.layer_positions(layers)
    start = time.perf_counter()
    pooled = [
        pool_features(store.features(rows[i : i + READ_BLOCK], device, identity_only=True, layers=layers)[:, 0])
        for i in range(0, len(rows), READ_BLOCK)
    ]
    x = torch.cat(pooled)
    synchronize(device)
    return Candidates(
        store=str(store.path),
        rows=rows,
        ids=[store.ids[i] for i in rows],
        x=x,
        layers=[store.layers[p] for p in positions],
        seconds=time.perf_counter() - start,
    )


def check_budget(budget: int, candidates: Candidates, option: str = "--budget") -> None:
    """Refuse a budget larger than the training split, naming the store and the largest budget it allows."""
    n = len(candidates.rows)
    if budget > n:
        raise FeatcacheError(
            f"{option} {budget} is larger than the training split of {candidates.store} ({n} images); "
            f"ask for at most {n}"
        )


@dataclass
class StoreSelection:
    """A strategy's choice among `Candidates`: the `Selection` (positions among the candidates, parameters), the
    chosen store ``rows`` and ``ids`` in the order chosen, and the selection's wall seconds (reading excluded)."""

    selection: Selection
    rows: np.ndarray
    ids: list[str]
    seconds: float


def choose(candidates: Candidates, *, strategy: str, budget: int, seed: int) -> StoreSelection:
    """``budget`` training images chosen by ``strategy`` (seeded by ``seed``) from the pooled candidates; the
    pooling recorded in the parameters is `POOLING` (the features were pooled by `training_candidates`)."""
    check_budget(budget, candidates)
    start = time.perf_counter()
    chosen = select(candidates.x, budget=budget, strategy=strategy, seed=seed)
    synchronize(candidates.x.device)
    seconds = time.perf_counter() - start
    params = {**chosen.params, "pooling": POOLING, "view": VIEW, "layers": candidates.layers}
    chosen = replace(chosen, params=params)
    order = np.asarray(chosen.order, dtype=np.int64)
    return StoreSelection(chosen, candidates.rows[order], [candidates.ids[i] for i in order], seconds)
