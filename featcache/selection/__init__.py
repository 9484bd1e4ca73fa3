"""Label selection: which training images to label, chosen from their cached encoder features (pooled per image).
This layer owns the strategies (random, k-center, TypiClust, ProbCover) and their one entry point, `select`."""

from featcache.selection.select import POOLING, Selection, pool_features, select
from featcache.selection.strategies import NESTED, STRATEGIES, kcenter, probcover, random_order, typiclust

__all__ = [
    "NESTED",
    "POOLING",
    "STRATEGIES",
    "Selection",
    "kcenter",
    "pool_features",
    "probcover",
    "random_order",
    "select",
    "typiclust",
]
