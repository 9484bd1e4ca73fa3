"""Training: the study's protocol, the modes as data, feature sources, the one epoch loop and its optimisers and
CUDA graphs, a run, sizes side by side, the train-decoder and compare-e2e sweeps, resume, and pretraining."""

from featcache.train.compare import Comparison, compare_e2e
from featcache.train.config import CompareConfig, RunKey, SweepConfig, TrainConfig
from featcache.train.modes import MODES, Mode
from featcache.train.pretrain import PretrainConfig, PretrainReport
from featcache.train.protocol import STUDY_PROTOCOL, Plan, protocol_for
from featcache.train.run import RunOutput, train_from_store
from featcache.train.sweep import SeedSweep, train_decoder

__all__ = [
    "MODES",
    "STUDY_PROTOCOL",
    "CompareConfig",
    "Comparison",
    "Mode",
    "Plan",
    "PretrainConfig",
    "PretrainReport",
    "RunKey",
    "RunOutput",
    "SeedSweep",
    "SweepConfig",
    "TrainConfig",
    "compare_e2e",
    "protocol_for",
    "train_decoder",
    "train_from_store",
]
