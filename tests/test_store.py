import numpy as np
import pytest
import torch

from featcache.errors import FeatcacheError
from featcache.store import FeatureStore, backend_kind, describe_differences

META = {
    "encoder": {"arch": "vit_micro", "weights_sha256": "a" * 64, "source": {"kind": "random", "seed": 0}},
    "preprocessing": {"size": 32},
    "dataset": {"fingerprint": "f"},
    "views": "flips",
}


def make_store(path, dtype="float16", n=5, shard_size=2):
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    splits = ["train"] * 3 + ["val"] * (n - 4) + ["test"]
    return FeatureStore.create(path, {**META, "dtype": dtype}, ids, splits, np.arange(2 * n).reshape(n, 2),
                               width=8, grid=(2, 2), shard_size=shard_size)


def fill(store, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(store.n, 4, 8, 2, 2, generator=gen)
    images = np.random.default_rng(seed).integers(0, 256, (store.n, 3, 32, 32), dtype=np.uint8)
    masks = (images[:, 0] > 127).astype(np.uint8)
    for start, stop in store.blocks():
        store.write_block(start, images[start:stop], masks[start:stop], feats[start:stop])
    return feats, images, masks


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_round_trip_on_both_backends(tmp_path, store_suffix, dtype):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path, dtype) as store:
        feats, images, masks = fill(store)
        store.mark_complete()
    with FeatureStore.open(path) as store:
        assert store.ids == [f"ISIC_{i:07d}" for i in range(5)]
        assert store.indices("train").tolist() == [0, 1, 2] and store.indices("test").tolist() == [4]
        assert store.view_names == ("identity", "h", "v", "hv") and store.has_flip_views
        torch_dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        got = store.features([4, 0, 2])
        assert got.dtype == torch_dtype
        torch.testing.assert_close(got, feats[[4, 0, 2]].to(torch_dtype))
        assert np.array_equal(store.images(np.array([3, 1])).numpy(), images[[3, 1]])
        split = store.load_split("train", with_images=True)
        assert split.ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
        assert torch.equal(split.masks, torch.from_numpy(masks[:3]))
        assert split.orig_hw.tolist() == [[0, 1], [2, 3], [4, 5]]
        assert store.written().all() and store.nbytes_stored() > 0
        for rows in ([4, 0, 2], [0, 4]):  # the identity view alone, by a contiguous and by a sparse read
            torch.testing.assert_close(store.features(rows, identity_only=True), feats[rows][:, :1].to(torch_dtype))


def test_incomplete_store_is_refused_with_the_fix(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        store.write_block(0, np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8), torch.zeros(2, 4, 8, 2, 2))
        with pytest.raises(FeatcacheError, match="3 samples were not written"):
            store.mark_complete()
    with pytest.raises(FeatcacheError, match=r"incomplete \(2/5 samples written.*run the same `featcache extract"):
        FeatureStore.open(path)
    with FeatureStore.open(path, allow_incomplete=True) as store:
        assert store.written().tolist() == [True, True, False, False, False]


def test_writes_must_be_shard_aligned(tmp_path):
    with make_store(tmp_path / "s.zarr") as store, pytest.raises(ValueError, match="shard-aligned"):
        store.write_block(1, np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8), torch.zeros(2, 4, 8, 2, 2))


def test_store_of_another_encoder_is_refused_naming_both(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill(store)
        store.mark_complete()
    other = {"arch": "vit_b_16", "weights_sha256": "b" * 64, "source": {"kind": "imagenet", "file": "vit_b_16-c867db91.pth"}}
    with pytest.raises(FeatcacheError) as err:
        FeatureStore.open(path, encoder=other)
    assert "vit_micro (random: random seed 0" in str(err.value) and "vit_b_16 (imagenet" in str(err.value)
    FeatureStore.open(path, encoder=META["encoder"]).close()


def test_not_a_store(tmp_path):
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(FeatcacheError, match="not a featcache store"):
        FeatureStore.open(tmp_path / "plain.zarr")
    (tmp_path / "junk.h5").write_text("hello")
    with pytest.raises(FeatcacheError, match="not a readable HDF5 store"):
        FeatureStore.open(tmp_path / "junk.h5")
    with pytest.raises(FeatcacheError, match="no store at"):
        FeatureStore.open(tmp_path / "missing.zarr")
    with pytest.raises(FeatcacheError, match=r"ends in .zarr"):
        backend_kind(tmp_path / "store.npz")


def test_memory_url_store():
    path = "memory://featcache-test/s.zarr"
    with make_store(path) as store:
        feats, _, _ = fill(store)
        store.mark_complete()
    with FeatureStore.open(path) as store:
        torch.testing.assert_close(store.features([1]), feats[[1]].half())


def test_describe_differences_names_the_entry():
    new = {**META, "views": "identity", "encoder": {**META["encoder"], "weights_sha256": "c" * 64}}
    lines = describe_differences({**META, "dtype": "float16"}, {**new, "dtype": "float16"})
    assert "views: flips -> identity" in lines
    assert any(line.startswith("encoder.weights_sha256: aaaaaaaaaaaa… -> cccccccccccc…") for line in lines)
