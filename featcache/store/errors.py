"""The store's own errors: what is at a path is not a store, or a store of ours that cannot be read."""

from __future__ import annotations

from featcache.core.errors import FeatcacheError

NOT_A_STORE_FIX = "point to a store that `featcache extract` wrote"


class MalformedStoreError(FeatcacheError):
    """A featcache store whose own attribute is damaged: ours, so --overwrite may replace it."""


class NotAStoreError(FeatcacheError):
    """Something is at the path, but not a featcache store."""


class DamagedChunksError(FeatcacheError):
    """Chunks of a store are missing, fail their checksum or cannot be decoded."""


class UnreadableStoreError(FeatcacheError):
    """A featcache HDF5 store that an interrupted write left unreadable (only `extract --overwrite` helps)."""
