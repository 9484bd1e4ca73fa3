"""featcache.store.schema: a store's provenance as a record, the refusals of what is not one, and what differs."""

import copy
import dataclasses
import re

import pytest
import zarr

from featcache.core.errors import FeatcacheError
from featcache.models import WeightsSource
from featcache.store.errors import MalformedStoreError, NotAStoreError
from featcache.store.feature_store import FeatureStore
from featcache.store.schema import (
    ATTR,
    FORMAT_VERSION,
    SEAL,
    StoreRecord,
    describe_differences,
    read_record,
    seal,
)
from tests.helpers import tiny_identity


@pytest.fixture(scope="module")
def raw(micro_store) -> dict:
    """The provenance attribute of `micro_store` as zarr reads it, not through featcache."""
    return dict(zarr.open_group(micro_store, mode="r").attrs[ATTR])


def test_the_record_of_a_real_store_writes_back_its_attribute(micro_store, raw):
    record = StoreRecord.from_json(raw)
    out = record.to_json()
    assert out == raw and list(out) == list(raw)
    assert record.format_version == FORMAT_VERSION and record.complete and record.backend == "zarr"
    assert record.encoder.arch == "vit_micro" and record.encoder.source == WeightsSource("random", seed=0)
    assert record.view_names == ["identity", "h", "v", "hv"] and record.dtype == "float32"
    assert record.extraction is not None and record.extraction.device == "cpu"
    with FeatureStore.open(micro_store) as store:
        assert store.record.to_json() == raw
        assert (store.n, store.layers) == (record.n, record.layers) == (24, (2,))


def test_read_record_gives_the_record(raw):
    assert read_record(raw, "s.zarr").to_json() == raw


def test_a_document_without_format_version_is_not_a_store():
    for meta in ({}, {"something": "else"}):
        with pytest.raises(NotAStoreError, match=r"^x\.zarr exists but is not a featcache store; point to a store"):
            read_record(meta, "x.zarr")


@pytest.mark.parametrize("version", ["2", 2.0, True, None])
def test_a_format_version_that_is_not_a_whole_number_is_malformed(raw, version):
    if version is None:  # null reads as absent
        with pytest.raises(NotAStoreError):
            read_record({**raw, "format_version": None}, "x.zarr")
        return
    with pytest.raises(MalformedStoreError) as info:
        read_record({**raw, "format_version": version}, "x.zarr")
    assert str(info.value) == (
        f"x.zarr: its featcache attribute is malformed (format_version {version!r}); re-extract with --overwrite"
    )


def test_a_newer_format_says_to_upgrade(raw):
    with pytest.raises(FeatcacheError) as info:
        read_record({**raw, "format_version": FORMAT_VERSION + 1}, "x.zarr")
    assert not isinstance(info.value, MalformedStoreError | NotAStoreError)
    assert str(info.value) == (
        f"x.zarr has store format {FORMAT_VERSION + 1}; this featcache reads up to {FORMAT_VERSION}: upgrade featcache"
    )


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda m: m.pop("encoder"), "StoreRecord lacks its entry 'encoder'"),
        (lambda m: m.pop("n"), "StoreRecord lacks its entry 'n'"),
        (
            lambda m: m["encoder"].pop("weights_sha256"),
            "StoreRecord.encoder: EncoderRecord lacks its entry 'weights_sha256'",
        ),
        (
            lambda m: m.update(preprocessing="64px"),
            "StoreRecord.preprocessing: Preprocessing expects a JSON object, not str",
        ),
        (
            lambda m: m["encoder"].update(source="random"),
            "StoreRecord.encoder: EncoderRecord.source: WeightsSource expects a JSON object, not str",
        ),
    ],
)
def test_a_damaged_record_is_malformed_naming_the_entry_and_the_fix(raw, damage, named):
    meta = copy.deepcopy(raw)
    damage(meta)
    with pytest.raises(MalformedStoreError) as info:
        read_record(meta, "runs/x.zarr")
    assert str(info.value) == (
        f"runs/x.zarr: its provenance (the 'featcache' attribute) is damaged ({named}); re-extract the store with "
        "`featcache extract ... --out runs/x.zarr --overwrite`"
    )


def test_describe_differences_names_each_identity_entry_that_differs():
    old = tiny_identity()
    assert describe_differences(old, tiny_identity()) == []
    new = tiny_identity(dtype="float32")
    new.encoder.weights_sha256 = "b" * 64
    new.encoder.source = WeightsSource("random", seed=1)
    new.preprocessing.size = 64
    new.dataset.counts = {**new.dataset.counts, "val": 2}
    assert describe_differences(old, new) == [
        "encoder.source.seed: 0 -> 1",
        f"encoder.weights_sha256: {'a' * 12}… -> {'b' * 12}…",
        "preprocessing.size: 32 -> 64",
        "dataset.counts.val: 1 -> 2",
        "dtype: float16 -> float32",
    ]


def test_describe_differences_ignores_what_is_not_identity():
    old = tiny_identity()
    new = dataclasses.replace(tiny_identity(), dataset_root="/elsewhere", created="2030-01-01")
    assert describe_differences(old, new) == []
    assert describe_differences(old, dataclasses.replace(tiny_identity(), compute="float32")) == [
        "compute: None -> float32"
    ]


@pytest.mark.parametrize("source", [[], [{"kind": "random", "seed": 0}]])
def test_a_list_where_one_record_belongs_is_malformed(raw, source):
    # A JSON list under a field whose NESTED type is one record reads as a list of records; the store then opens
    # and fails later (`featcache info`: "error: AttributeError: 'list' object has no attribute 'kind'").
    meta = copy.deepcopy(raw)
    meta["encoder"]["source"] = source
    with pytest.raises(MalformedStoreError, match=r"^runs/x\.zarr: its provenance .* is damaged"):
        read_record(meta, "runs/x.zarr")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(n=m["n"] + 1),
        lambda m: m["encoder"].update(weights_sha256="0" + m["encoder"]["weights_sha256"][1:]),
        lambda m: m["encoder"]["source"].update(weights_sha25=1),  # a key of an optional entry, changed
        lambda m: m["dataset"].update(fingerprint=m["dataset"]["fingerprint"].upper()),
    ],
)
def test_any_changed_entry_of_a_sealed_provenance_is_damage(raw, change):
    """A schema check alone passes these: the seal is what catches a changed value or an optional key."""
    meta = copy.deepcopy(raw)
    change(meta)
    with pytest.raises(MalformedStoreError, match=rf"damaged \(it no longer matches its {SEAL}: an entry was"):
        read_record(meta, "x.zarr")
    read_record(seal(meta), "x.zarr")  # resealed, it reads (a deliberate edit is the writer's business)


def test_the_seal_is_required_from_format_3_on(raw):
    meta = {k: v for k, v in raw.items() if k != SEAL}
    with pytest.raises(MalformedStoreError, match=rf"damaged \(its {SEAL} entry is missing\)"):
        read_record(meta, "x.zarr")
    read_record({**meta, "format_version": 2}, "x.zarr")  # format 2 had none


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m.update(n=0), "n 0 is not a positive whole number"),
        (lambda m: m.update(grid=[2]), "grid [2] is not two positive whole numbers"),
        (lambda m: m.update(view_names=["identity"]), "views 'flips' with view_names ['identity']"),
        (lambda m: m.update(dtype="float8"), "dtype 'float8' is not one of float16, float32, bfloat16"),
        (lambda m: m["encoder"].update(layers=[9]), "encoder.layers [9] of width"),
        (lambda m: m["encoder"].update(config={}), "KeyError: 'num_layers'"),
        (lambda m: m.update(tail_tokens=0), "tail_tokens 0 is not a number of blocks from 1 to"),
        (lambda m: m.update(tail_tokens=1, n_tokens=None), "n_tokens None is not a positive whole number"),
    ],
)
def test_a_resealed_record_with_impossible_values_is_still_damage(raw, change, named):
    meta = copy.deepcopy(raw)
    change(meta)
    with pytest.raises(MalformedStoreError, match=re.escape(named)):
        read_record(seal(meta), "x.zarr")
