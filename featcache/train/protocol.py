"""The study's few-shot protocol (training-set size -> validation size, epochs, batch), the plan a run
resolves from it once, and the seeded subsets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from featcache.core.errors import FeatcacheError, OptionError, check_at_least

#: The study's table: train size -> (validation size, epochs, batch size).
STUDY_PROTOCOL: dict[int, tuple[int, int, int]] = {
    2000: (150, 100, 50),
    160: (80, 200, 10),
    80: (40, 300, 10),
    40: (20, 500, 10),
    20: (10, 800, 10),
    10: (5, 1200, 5),
}
STUDY_SIZES = tuple(STUDY_PROTOCOL)


@dataclass(frozen=True)
class Protocol:
    size: int
    val_size: int
    epochs: int
    batch_size: int
    rule: str  # "study" for a size of the study's table, else how the row was derived


def protocol_for(size: int) -> Protocol:
    """The study's row for its sizes; for other sizes a documented rule.

    Rule: epochs and batch size come from the study's size nearest on a log scale (e.g. 30 -> 20
    or 40, whichever is nearer; ties go to the larger size); the validation size is half the
    training size (at least 1) up to 160 images and 150 beyond, as in the study's table.
    """
    if size < 1:
        raise OptionError(f"--size {size} must be at least 1")
    if size in STUDY_PROTOCOL:
        return Protocol(size, *STUDY_PROTOCOL[size], rule="study")
    nearest = min(STUDY_SIZES, key=lambda s: (abs(math.log(s) - math.log(size)), -s))
    _, epochs, batch = STUDY_PROTOCOL[nearest]
    val = max(1, size // 2) if size <= 160 else 150
    return Protocol(
        size, val, epochs, min(batch, size), rule=f"epochs and batch of size {nearest}, validation half the size"
    )


@dataclass(frozen=True)
class Plan:
    """What every run of one size trains with, resolved once from the options and the protocol.

    ``note`` says when the protocol's validation size was capped at a small validation split ("" otherwise).
    """

    size: int
    epochs: int
    batch_size: int
    val_size: int
    note: str = ""


def plan_run(
    size: int, epochs: int | None, batch_size: int | None, *, val_size: int | None, n_train: int, n_val: int, where: str
) -> Plan:
    """The plan of a run of ``size`` images: None options take the protocol's values (`protocol_for`).

    The same rule everywhere: a ``size`` or an explicit ``val_size`` larger than the store's split
    (``n_train``, ``n_val`` images of the store ``where``) is refused; the protocol's own validation size
    is capped at the split, with a note.
    """
    proto = protocol_for(size)
    epochs = proto.epochs if epochs is None else epochs
    batch_size = proto.batch_size if batch_size is None else batch_size
    for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--val-size", val_size)):
        check_at_least(option, value, 1)
    if size > n_train:
        raise FeatcacheError(f"--size {size} is larger than the training split of {where} ({n_train} images)")
    note = ""
    if val_size is None:
        val_size = proto.val_size
        if val_size > n_val:
            note = f"validation size {val_size} of the protocol capped at the {n_val} images of the validation split"
            val_size = n_val
    elif val_size > n_val:
        raise FeatcacheError(f"--val-size {val_size} is larger than the validation split of {where} ({n_val} images)")
    return Plan(size, epochs, batch_size, val_size, note)


def subset(n_available: int, size: int, seed: int, *, salt: int = 0) -> np.ndarray:
    """``size`` sorted positions out of ``n_available``, seeded.

    The first ``size`` entries of one seeded permutation, so for one seed the subsets are nested
    across sizes (10 inside 20 inside 40 ...), as in the study, and independent of listing order.
    ``salt`` separates the draws of different splits under one seed.
    """
    if size > n_available:
        raise FeatcacheError(f"asked for {size} images but only {n_available} are available")
    perm = np.random.default_rng(np.random.SeedSequence([seed, salt])).permutation(n_available)
    return np.sort(perm[:size])
