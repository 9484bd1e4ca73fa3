"""Experiment tracking: runs' parameters, per-epoch losses, test metrics and files sent to MLflow, TensorBoard or W&B
through one small interface (`Trackers`), chosen with ``--track``; a failing backend never stops the training."""

from featcache.track.base import ParamValue, Status, Tracker, TrackerRun, flatten_params
from featcache.track.fanout import Run, Trackers
from featcache.track.options import ENV_VAR, TRACK_HELP, TRACKERS, open_trackers, parse_track

__all__ = [
    "ENV_VAR",
    "TRACKERS",
    "TRACK_HELP",
    "ParamValue",
    "Run",
    "Status",
    "Tracker",
    "TrackerRun",
    "Trackers",
    "flatten_params",
    "open_trackers",
    "parse_track",
]
