"""A sweep's label selections: per (selection, size, seed) the training images a strategy or a person's file chose,
resolved once before any training, and what each run records of how its images were chosen.

``random`` chooses nothing: its runs take the seeded nested subsets every sweep draws (`protocol.subset`), so they
are the very runs of an earlier sweep. A strategy's randomness is the run's seed (k-center's start, k-means'
initialisation), so each of its runs pairs with random's run of the same seed: same validation subset, initial
weights and batch order, other training images. ``file`` takes the first ``size`` ids of a selection file for
every seed; the seeds then vary only the training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache.core.errors import FeatcacheError
from featcache.results.records import SelectionRecord
from featcache.selection.from_store import Candidates, check_budget, choose, training_candidates
from featcache.selection.ids_file import check_training_ids, read_ids
from featcache.selection.strategies import NESTED
from featcache.store.feature_store import FeatureStore

RANDOM, FILE = "random", "file"


@dataclass(frozen=True)
class Chosen:
    """One run's training images as its selection chose them (None: random's seeded subset) and the record its
    ``results.json`` keeps."""

    train_ids: tuple[str, ...] | None
    record: SelectionRecord


def choose_subsets(
    store: FeatureStore,
    *,
    selections: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int],
    layers: Sequence[int] | None,
    selection_file: Path | None,
    device: torch.device,
    option: str,
) -> dict[tuple[str, int, int], Chosen]:
    """Every run's training images, by (selection, size, seed): ``selections`` are `STRATEGIES` names or `FILE`
    (the first ``size`` ids of ``selection_file``). A strategy compares the identity-view features of the blocks
    ``layers`` the decoders read, pooled per image, with its distances on ``device``; a nested one (k-center) is
    chosen once at the largest size and its prefixes taken, so its sizes nest as random's do; the others choose
    afresh at each size. ``option``: the sizes' option, for the error of a size beyond the split or the file."""
    out: dict[tuple[str, int, int], Chosen] = {}
    strategies = [s for s in selections if s not in (RANDOM, FILE)]
    candidates = training_candidates(store, device, layers=layers) if strategies else None
    for label in selections:
        if label == RANDOM:
            record = SelectionRecord(RANDOM, None, True)
            out.update({(label, size, seed): Chosen(None, _seeded(record, seed)) for size in sizes for seed in seeds})
        elif label == FILE:
            out.update(_from_file(store, selection_file, sizes=sizes, seeds=seeds, option=option))
        else:
            out.update(_by_strategy(candidates, label, sizes=sizes, seeds=seeds, option=option))
    return out


def _seeded(record: SelectionRecord, seed: int) -> SelectionRecord:
    return SelectionRecord(record.strategy, seed, record.nested, dict(record.params), record.file)


def _from_file(
    store: FeatureStore, path: Path, *, sizes: Sequence[int], seeds: Sequence[int], option: str
) -> dict[tuple[str, int, int], Chosen]:
    """The first ``size`` ids of the file for every seed, checked against the store's training split."""
    ids = read_ids(path)
    check_training_ids(ids, store, path)
    short = [s for s in sizes if s > len(ids)]
    if short:
        raise FeatcacheError(
            f"--selection-file {path} names {len(ids)} images, fewer than {option} {max(short)} takes (size N takes "
            f"its first N ids); add ids to the file or ask for sizes up to {len(ids)}"
        )
    record = SelectionRecord(FILE, None, True, {"ids": len(ids)}, file=str(path))
    return {(FILE, size, seed): Chosen(tuple(ids[:size]), record) for size in sizes for seed in seeds}


def _by_strategy(
    candidates: Candidates, strategy: str, *, sizes: Sequence[int], seeds: Sequence[int], option: str
) -> dict[tuple[str, int, int], Chosen]:
    """A strategy's choice per size and seed (the seed its randomness); a size of the whole split takes it all."""
    for size in sizes:
        check_budget(size, candidates, option)
    n, out = len(candidates.rows), {}
    for seed in seeds:
        if strategy in NESTED:
            largest = choose(candidates, strategy=strategy, budget=min(max(sizes), n), seed=seed)
            picked = {size: (largest.ids[:size], largest.selection.params) for size in sizes}
        else:
            picked = {}
            for size in sizes:
                if size == n:  # every image, whatever the strategy: nothing to run
                    picked[size] = (candidates.ids, {"whole split": True})
                    continue
                chosen = choose(candidates, strategy=strategy, budget=size, seed=seed)
                picked[size] = (chosen.ids, chosen.selection.params)
        for size, (ids, params) in picked.items():
            record = SelectionRecord(strategy, seed, strategy in NESTED, params)
            out[(strategy, size, seed)] = Chosen(tuple(ids), record)
    return out
