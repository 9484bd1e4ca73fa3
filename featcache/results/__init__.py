"""Results: per-image metrics and `evaluate`, statistics over seeds, rich tables, CSV files, PNG figures, the
markdown report, mask overlays, and `predict` (masks for new images from a trained run)."""

from featcache.results.evaluate import EvaluateConfig, evaluate_dirs
from featcache.results.metrics import METRICS, confusion, mean_scores, scores
from featcache.results.predict import PredictConfig, Prediction
from featcache.results.records import DecoderCheckpoint, RunResults
from featcache.results.report import write_report
from featcache.results.stats import aggregate, paired_difference
from featcache.results.tables import compare_table, grid_table, seeds_table

__all__ = [
    "METRICS",
    "EvaluateConfig",
    "PredictConfig",
    "DecoderCheckpoint",
    "Prediction",
    "RunResults",
    "aggregate",
    "compare_table",
    "confusion",
    "evaluate_dirs",
    "grid_table",
    "mean_scores",
    "paired_difference",
    "scores",
    "seeds_table",
    "write_report",
]
