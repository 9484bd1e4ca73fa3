"""Label selection: which training images to label, chosen from their cached encoder features (pooled per image).
This layer owns the strategies (random, k-center, TypiClust, ProbCover) and their one entry point, `select`; a
store's training split as candidates (`training_candidates`, `choose`); selection files (the ids, one per line, and
``FILE.json``); and `featcache select` (`select_to_file`), with its figures and table."""

from featcache.selection.command import SelectConfig, SelectReport, select_to_file, selection_table
from featcache.selection.from_store import Candidates, StoreSelection, choose, training_candidates
from featcache.selection.ids_file import SelectionManifest, check_training_ids, read_ids
from featcache.selection.select import POOLING, Selection, pool_features, select
from featcache.selection.strategies import NESTED, STRATEGIES, kcenter, probcover, random_order, typiclust

__all__ = [
    "NESTED",
    "POOLING",
    "STRATEGIES",
    "Candidates",
    "SelectConfig",
    "SelectReport",
    "Selection",
    "SelectionManifest",
    "StoreSelection",
    "check_training_ids",
    "choose",
    "kcenter",
    "pool_features",
    "probcover",
    "random_order",
    "read_ids",
    "select",
    "select_to_file",
    "selection_table",
    "training_candidates",
    "typiclust",
]
