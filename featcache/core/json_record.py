"""Typed records of JSON documents: dataclasses read from and written back to the JSON that featcache keeps on disk
(a run's ``results.json``, a store's provenance), so that code reads attributes, not string keys.

A record writes its fields in their declared order; fields in ``OPTIONAL`` only when they are not None, so a
document that lacked an entry is written back without it. Entries a record does not know are kept in ``extra``
and written back after its fields: reading and rewriting a document written by a newer featcache loses nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self


class RecordError(ValueError):
    """A JSON document that does not hold what its record needs (a missing entry, or one of the wrong kind)."""


class JsonRecord:
    """Base of the record dataclasses. ``NESTED`` maps a field to the record type of its value (one record, never
    a list); ``OPTIONAL`` lists the fields left out of the JSON when None."""

    NESTED: ClassVar[dict[str, type[JsonRecord]]] = {}
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of ``data`` (a dict from JSON); `RecordError` names the first entry that is missing or not
        a dict where a record is expected."""
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__} expects a JSON object, not {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        for name, field in fields.items():
            if name not in data:
                required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
                if required:
                    raise RecordError(f"{cls.__name__} lacks its entry {name!r}")
                continue
            values[name] = cls._read_value(name, data[name])
        extra = {k: v for k, v in data.items() if k not in fields}
        return cls(**values, extra=extra)

    @classmethod
    def _read_value(cls, name: str, value: Any) -> Any:
        kind = cls.NESTED.get(name)
        if kind is None or value is None:
            return value
        try:
            return kind.from_json(value)
        except RecordError as e:
            raise RecordError(f"{cls.__name__}.{name}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON document: fields in declared order (``OPTIONAL`` ones only when set), then ``extra``."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "extra":
                continue
            value = getattr(self, field.name)
            if value is None and field.name in self.OPTIONAL:
                continue
            out[field.name] = _to_json(value)
        out.update(getattr(self, "extra", {}))
        return out


def _to_json(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value
