"""The feature store: its schema and API over one module per backend (Zarr, HDF5) behind the `Backend` protocol,
integrity checks, and the commands that write or read it whole: extract, verify, info and the encoder check."""

from featcache.store.backend import Backend
from featcache.store.encoder_check import check_encoder_matches
from featcache.store.errors import DamagedChunksError, NotAStoreError, UnreadableStoreError
from featcache.store.extract_config import ExtractConfig
from featcache.store.feature_store import FeatureStore, SplitData
from featcache.store.fill import ExtractReport
from featcache.store.info import store_info
from featcache.store.integrity import Damage
from featcache.store.schema import VIEW_FLIPS, VIEWS
from featcache.store.verify import VerifyReport, verify_store

__all__ = [
    "VIEWS",
    "VIEW_FLIPS",
    "Backend",
    "DamagedChunksError",
    "Damage",
    "ExtractConfig",
    "ExtractReport",
    "FeatureStore",
    "NotAStoreError",
    "SplitData",
    "UnreadableStoreError",
    "VerifyReport",
    "check_encoder_matches",
    "store_info",
    "verify_store",
]
