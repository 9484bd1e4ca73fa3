"""Prove that an encoder at hand computed a store's features, by re-encoding one stored sample.

A store's ``encoder`` attribute is a claim: `FeatureStore.check_encoder` compares hashes of that
claim, and an edited or mistaken claim passes it. Re-encoding a stored image and comparing with its
stored features checks the features themselves, up to the rounding of the store's dtype and of the
two computations' precision.
"""

from __future__ import annotations

import torch

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import compute_precision, err_console
from featcache.models.record import record_of
from featcache.models.spec import AnyEncoder
from featcache.models.weights import weights_sha256
from featcache.store.encode import encode_views
from featcache.store.feature_store import FeatureStore
from featcache.store.location import store_exists

#: Relative L2 difference that rounding to the storage dtype alone can cause (float16: 2^-11 per
#: element, bfloat16: 2^-8), with room for a different summation order.
STORAGE_TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "bfloat16": 2e-2}
#: Added when either computation ran under bf16 autocast (the extraction's or this one).
BF16_COMPUTE_TOLERANCE = 1e-1


def tolerance(store: FeatureStore, device: torch.device) -> float:
    """The relative L2 difference within which re-encoding on ``device`` counts as the store's encoder.

    A store that does not record its ``compute`` precision may have been extracted under bf16.
    """
    exact = {store.record.compute, compute_precision(device)} == {"float32"}
    return STORAGE_TOLERANCE[store.record.dtype] + (0.0 if exact else BF16_COMPUTE_TOLERANCE)


@torch.no_grad()
def check_encoder_matches(store: FeatureStore, encoder: AnyEncoder, device: torch.device) -> float:
    """Refuse ``encoder`` unless it reproduces the stored identity-view features of the first training sample.

    The sample's stored uint8 image ``[3, S, S]`` goes through `encode_views` as extraction fed it;
    the result ``[L*C, h, w]`` is compared with the stored row (the encoder's blocks of it) by relative L2 difference
    ``||recomputed - stored|| / ||stored||``, which is returned. ``encoder`` is moved to ``device``
    and put in eval mode.
    """
    row = int(store.indices("train")[0])
    stored = store.features([row], identity_only=True, layers=encoder.layers).float()[0, 0]
    encoder.to(device).eval()
    recomputed = encode_views(encoder, store.images([row]), ("identity",), device=device)[0, 0].cpu()
    difference = float((recomputed - stored).norm() / stored.norm().clamp_min(1e-12))
    limit = tolerance(store, device)
    if not difference <= limit:  # NaN fails too
        raise FeatcacheError(
            f"{store.path} does not hold the features of {record_of(encoder).describe()}: "
            f"re-encoding sample {store.ids[row]} differs from its stored features by {difference:.3g} (relative L2; "
            f"rounding allows {limit:.3g}), so it was not extracted with this encoder, whatever its record says; "
            "use the encoder the store was extracted with, or extract a new store with this one "
            "(`featcache extract DATA --encoder ... --out NEW_STORE`)"
        )
    return difference


def check_run_encoder(store_path: str, encoder: AnyEncoder, device: torch.device) -> float | None:
    """`check_encoder_matches` against the store a run was trained from, when it is still at ``store_path``.

    When it is not there, cannot be opened, is incomplete or was replaced by a store of another encoder,
    says so in one line and returns None: the encoder then rests on its recorded hash alone.
    """
    why = ""
    if not store_exists(store_path):
        why = "is not there"
    else:
        try:
            store = FeatureStore.open(store_path, allow_incomplete=True)
        except FeatcacheError as exc:
            why = f"cannot be opened ({exc})"
        else:
            with store:
                if not store.record.complete:
                    why = "is incomplete"
                elif store.record.encoder.weights_sha256 != weights_sha256(encoder):
                    why = f"now holds the features of {store.record.encoder.describe()}"
                else:
                    return check_encoder_matches(store, encoder, device)
    err_console.print(
        f"note: the run's store {store_path} {why}, so the encoder was checked by its recorded hash "
        "only, not against the store's features",
        markup=False,
        highlight=False,
    )
    return None
