"""featcache.core.json_record: typed records of JSON documents, on tiny records defined here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from featcache.core.json_record import JsonRecord, RecordError


@dataclass
class Point(JsonRecord):
    x: int
    y: int = 0
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Shape(JsonRecord):
    NESTED: ClassVar = {"origin": Point}
    OPTIONAL: ClassVar = ("label",)

    name: str
    origin: Point
    label: str | None = None
    note: str | None = None  # not optional: None is written as null
    sizes: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, repr=False, compare=False)


DOCUMENT = {
    "name": "tri",
    "origin": {"x": 1, "y": 2},
    "label": "a",
    "note": None,
    "sizes": [1, 2],
}


def test_a_document_round_trips_in_declared_order():
    shape = Shape.from_json(DOCUMENT)
    assert shape.origin == Point(1, 2) and isinstance(shape.origin, Point)
    out = shape.to_json()
    assert out == DOCUMENT and list(out) == list(DOCUMENT)
    assert json.loads(json.dumps(out)) == DOCUMENT


def test_tuples_are_written_as_lists_and_records_as_objects():
    out = Shape("s", Point(5), sizes=(3, 4)).to_json()
    assert out == {
        "name": "s",
        "origin": {"x": 5, "y": 0},
        "note": None,
        "sizes": [3, 4],
    }


def test_optional_fields_are_left_out_when_none_others_are_written_as_null():
    out = Shape("s", Point(0)).to_json()
    assert "label" not in out and out["note"] is None
    assert Shape("s", Point(0), label="x").to_json()["label"] == "x"


def test_missing_entries_with_defaults_take_them():
    shape = Shape.from_json({"name": "s", "origin": {"x": 7}})
    assert shape == Shape("s", Point(7, 0)) and shape.label is None
    assert shape.to_json() == {"name": "s", "origin": {"x": 7, "y": 0}, "note": None, "sizes": []}


def test_unknown_entries_are_kept_and_written_back_after_the_fields():
    newer = {**DOCUMENT, "origin": {"x": 1, "y": 2, "z": 9}, "colour": "red", "tags": [1]}
    shape = Shape.from_json(newer)
    assert shape.extra == {"colour": "red", "tags": [1]} and shape.origin.extra == {"z": 9}
    out = shape.to_json()
    assert out == newer and list(out)[-2:] == ["colour", "tags"]


def test_a_missing_required_entry_is_named():
    with pytest.raises(RecordError, match=r"^Shape lacks its entry 'origin'$"):
        Shape.from_json({"name": "s"})
    with pytest.raises(RecordError, match=r"^Shape.origin: Point lacks its entry 'x'$"):
        Shape.from_json({"name": "s", "origin": {"y": 1}})


def test_something_else_where_a_record_belongs_is_refused():
    with pytest.raises(RecordError, match=r"^Shape expects a JSON object, not list$"):
        Shape.from_json([DOCUMENT])
    with pytest.raises(RecordError, match=r"^Shape.origin: Point expects a JSON object, not int$"):
        Shape.from_json({"name": "s", "origin": 3})
    with pytest.raises(RecordError, match=r"^Shape.origin: Point expects a JSON object, not list$"):
        Shape.from_json({"name": "s", "origin": [{"x": 1}]})


def test_a_nested_null_stays_none():
    shape = Shape.from_json({"name": "s", "origin": None})
    assert shape.origin is None
    assert shape.to_json()["origin"] is None
