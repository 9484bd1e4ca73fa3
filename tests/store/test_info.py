"""featcache.store.info: what ``featcache info`` says of a complete store and of an interrupted one."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from featcache.core.errors import FeatcacheError
from featcache.store.feature_store import FeatureStore
from featcache.store.info import flip_check, store_info
from featcache.store.schema import ATTR


def test_a_complete_store(micro_store):
    info = store_info(str(micro_store)).to_json()
    raw = zarr.open_group(micro_store, mode="r")
    record = raw.attrs[ATTR]
    assert json.loads(json.dumps(info)) == info  # what `info --json` prints
    assert info["path"] == str(micro_store) and info["backend"] == "zarr"
    assert info["complete"] is True and info["written"] == info["n"] == 24
    assert info["splits"] == {"train": 12, "val": 6, "test": 6}
    assert info["shapes"] == {name: list(raw[name].shape) for name in ("images", "masks", "features")}
    assert info["shapes"]["features"] == [24, 4, 32, 4, 4]  # 4 flip views, width 32 on a 4x4 grid of 64 px
    assert info["views"] == ["identity", "h", "v", "hv"] and info["dtype"] == "float32"
    assert info["layers"] == [2] and info["depth"] == 2 and info["patch_size"] == 16 and info["grid"] == [4, 4]
    assert info["encoder"] == record["encoder"] and info["encoder_summary"].startswith("vit_micro (random: random seed")
    assert info["preprocessing"] == record["preprocessing"]
    assert info["dataset"] == {**record["dataset"], "root": record["dataset_root"]}
    assert info["skipped_bad"] == [] and info["extraction"] == record["extraction"]
    assert info["format_version"] == record["format_version"] and info["checksum"] == "crc32c"
    files = sum(p.stat().st_size for p in micro_store.rglob("*") if p.is_file())
    assert 0 < info["bytes_on_disk"] <= files


def test_the_flip_check_is_the_cosine_of_flipped_features(micro_store):
    cos = store_info(str(micro_store)).to_json()["flip_check_cos"]
    assert set(cos) == {"h", "v", "hv", "mean"} and all(0 < v < 1 for v in cos.values())
    with FeatureStore.open(micro_store) as store:
        feats = store.features(np.arange(store.n), dtype=torch.float32)  # every row: 24 <= 64
        for v, dims in ((1, (-1,)), (2, (-2,)), (3, (-2, -1))):
            expected = F.cosine_similarity(feats[:, 0].flip(dims), feats[:, v], dim=1).mean()
            assert cos[store.view_names[v]] == pytest.approx(float(expected), rel=1e-5)
        assert flip_check(store, max_samples=2) != cos  # fewer samples, another mean: the rows are really used
    assert cos["mean"] == pytest.approx((cos["h"] + cos["v"] + cos["hv"]) / 3)


def test_an_interrupted_store_is_summarised_without_a_flip_check(micro_store, tmp_path):
    path = tmp_path / "interrupted.zarr"
    shutil.copytree(micro_store, path)
    with FeatureStore.open(path, writable=True, allow_incomplete=True) as store:
        store.mark_incomplete()
        store.backend["written"][4:8] = np.zeros(4, dtype=bool)  # the second block of 4, unwritten
    info = store_info(str(path)).to_json()
    assert info["complete"] is False and info["written"] == 20 and info["n"] == 24
    assert info["flip_check_cos"] is None
    assert info["shapes"]["features"] == [24, 4, 32, 4, 4] and info["splits"] == {"train": 12, "val": 6, "test": 6}
    with pytest.raises(FeatcacheError, match=r"is incomplete \(20/24 samples written; the extraction was"):
        FeatureStore.open(path)
