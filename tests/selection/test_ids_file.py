"""Selection files: ids one per line in the order chosen, the manifest beside them, and one line for every file
a person could get wrong (missing, empty, an id twice, unknown ids, ids of the validation or test split)."""

import json

import pytest

from featcache.core.errors import FeatcacheError
from featcache.selection.ids_file import (
    SelectionManifest,
    check_training_ids,
    manifest_path,
    read_ids,
    rows_of,
    write_selection,
)
from featcache.store import FeatureStore


def manifest(ids):
    return SelectionManifest(
        strategy="kcenter",
        budget=len(ids),
        seed=2,
        nested=True,
        params={"start": 1},
        store="s.zarr",
        candidates=12,
        ids=ids,
        rows=list(range(len(ids))),
        seconds={"read": 0.1, "select": 0.01},
        device="cpu",
    )


def test_the_file_holds_the_ids_in_order_and_nothing_else_and_the_manifest_sits_beside_it(tmp_path):
    out = tmp_path / "chosen.txt"
    written = write_selection(out, manifest(["b", "a", "c"]))
    assert out.read_text() == "b\na\nc\n"
    assert written == manifest_path(out) == tmp_path / "chosen.txt.json"
    again = SelectionManifest.from_json(json.loads(written.read_text()))
    assert again == manifest(["b", "a", "c"]) and read_ids(out) == ["b", "a", "c"]


def test_blank_lines_and_spaces_around_ids_are_ignored(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("\n  ISIC_1 \r\n\nISIC_0\n\n")
    assert read_ids(path) == ["ISIC_1", "ISIC_0"]


@pytest.mark.parametrize(
    "text,words",
    [
        (None, "does not exist; write one id per line"),
        ("\n \n", "holds no ids; write one training-image id per line"),
        ("a\nb\na\n", "names a twice (ids 1 and 3); list each image once"),
        (b"\xff\xfe\x00", "cannot be read as text"),
    ],
)
def test_a_bad_file_is_refused_in_one_line(tmp_path, text, words):
    path = tmp_path / "ids.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(FeatcacheError) as caught:
        read_ids(path)
    assert f"--selection-file {path}" in str(caught.value) and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_ids_must_be_training_images_of_the_store(micro_store, tmp_path):
    path = tmp_path / "ids.txt"
    with FeatureStore.open(micro_store) as store:
        train, val, test = (store.indices(s) for s in ("train", "val", "test"))
        ids = [store.ids[i] for i in train[[3, 0, 5]]]
        check_training_ids(ids, store, path)
        assert rows_of(ids, store) == train[[3, 0, 5]].tolist()
        cases = [
            (ids + ["ISIC_9999999", "nope"], "2 ids are not in", "ISIC_9999999, nope; list ids of its training split"),
            (ids + [store.ids[val[1]]], f"{store.ids[val[1]]} is in the validation split", "training images only"),
            ([store.ids[i] for i in test[:4]], "and 1 more are in the test split", "test images must stay unseen"),
        ]
        for wrong, *words in cases:
            with pytest.raises(FeatcacheError) as caught:
                check_training_ids(wrong, store, path)
            message = str(caught.value)
            assert message.startswith(f"--selection-file {path}: ") and "\n" not in message
            assert all(w in message for w in words), message
