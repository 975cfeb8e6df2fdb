"""Per-request rows from Feast's online store, decoded straight into arrays.

Serving reads a few views per request (the listener's profile and familiar items, the
listener x item pairs of a page's candidates). :func:`online_rows` gives the reader for
the configured online store:

* **Redis** (:class:`RedisRows`): Feast's own layout, read directly. A row is a Redis
  hash at the serialized entity key + project (Feast's ``serialize_entity_key``, version
  3), a feature a hash field named by the murmur3 hash of ``"<view>:<feature>"``, its
  value a serialized ``ValueProto``; ``_ts:<view>`` holds the write time. Every view's
  rows of a read go out as HMGETs in **one pipeline**. Numbers are decoded in bulk: a
  double is the tag byte 0x29 and 8 little-endian bytes, an int64 the tag byte 0x20 and a
  varint, so a column of them is decoded by numpy, without a Python object per value.
  Anything else (strings, lists) is parsed as Feast parses it.
* **Any other store** (:class:`FeastRows`, e.g. SQLite): Feast's ``online_read``, one
  call per view (a local file: no network round trips to save).

Both return what ``get_online_features`` returns for the same rows (the parity tests in
tests/serving_checks.py hold them to it): numbers as float64 with NaN where missing,
anything else as an object array with None.
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

Columns = dict[str, np.ndarray]
"""Feature name -> one value per entity row."""

NUMERIC_TYPES = frozenset(("Int32", "Int64", "Float32", "Float64"))
"""Feast dtypes read as float64 columns (NaN when missing); the others as objects."""

_SCALARS = frozenset(
    ("int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val")
)
"""Value kinds decoded by plain attribute access (as Feast decodes them, faster)."""

_DOUBLE_TAG = 0x29  # field 5 (double_val), wire type 1 (64-bit)
_INT64_TAG = 0x20  # field 4 (int64_val), wire type 0 (varint)


@dataclass(frozen=True)
class RowRead:
    """``features`` of ``view`` for entity ``rows`` (tuples of the ``keys`` values)."""

    view: FeatureView
    keys: list[str]
    rows: list[tuple]
    features: list[str]


@dataclass(frozen=True)
class RowsRead:
    """What a ``RowRead`` found: one array per feature, and how many rows the store has
    no values for (unknown entities)."""

    columns: Columns
    missing: int


class OnlineRows(Protocol):
    def read(self, reads: Sequence[RowRead]) -> list[RowsRead]: ...


def is_numeric(view: FeatureView, feature: str) -> bool:
    """Whether ``feature`` of ``view`` is read as a float64 column."""
    return any(f.name == feature and str(f.dtype) in NUMERIC_TYPES for f in view.features)


def column(values: Sequence[Any], numeric: bool) -> np.ndarray:
    """Python values (None when missing) as a float64 array or an object array."""
    if numeric:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def decoded(values: Sequence[Value]) -> list[Any]:
    """Python values as ``OnlineResponse`` decodes them (Feast's own decoder for anything
    but scalars), missing values as None."""
    found: list[Any] = []
    for value in values:
        kind = value.WhichOneof("val")
        if kind is None:
            found.append(None)
        elif kind in _SCALARS:
            found.append(getattr(value, kind))
        else:
            found.append(feast_value_type_to_python_type(value))
    return found


def _entity_values(values: list, value_type: ValueType) -> list[Value]:
    if value_type == ValueType.STRING:
        return [Value(string_val=str(value)) for value in values]
    return python_values_to_proto_values(values, value_type)


def entity_keys(read: RowRead, types: dict[str, ValueType]) -> list[EntityKey]:
    """The rows of ``read`` as Feast entity keys."""
    kinds = [types.get(key, ValueType.STRING) for key in read.keys]
    values = [_entity_values([row[i] for row in read.rows], kind) for i, kind in enumerate(kinds)]
    return [
        EntityKey(join_keys=read.keys, entity_values=[column[r] for column in values])
        for r in range(len(read.rows))
    ]


class FeastRows:
    """Rows through Feast's ``online_read`` of the configured store, one call per view."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.online_store = store._get_provider().online_store
        self.types = {entity.join_key: entity.value_type for entity in store.list_entities()}

    def read(self, reads: Sequence[RowRead]) -> list[RowsRead]:
        return [self._read(read) for read in reads]

    def _read(self, read: RowRead) -> RowsRead:
        results = self.online_store.online_read(
            self.store.config, read.view, entity_keys(read, self.types), list(read.features)
        )
        found: dict[str, list[Value]] = {name: [] for name in read.features}
        missing = 0
        for _, row in results:
            missing += row is None
            for name in read.features:
                found[name].append((row or {}).get(name) or Value())
        columns = {
            name: column(decoded(found[name]), is_numeric(read.view, name))
            for name in read.features
        }
        return RowsRead(columns, missing)


def _string_key_part(value: str) -> bytes:
    encoded = value.encode("utf8")
    return struct.pack("<II", ValueType.STRING.value, len(encoded)) + encoded


class RedisRows(FeastRows):
    """Rows read from Feast's Redis layout directly (see module doc): one pipeline for
    every view of a read, numbers decoded in bulk."""

    def __init__(self, store: FeatureStore) -> None:
        super().__init__(store)
        self.redis = cast(RedisOnlineStore, self.online_store)
        config = store.config
        self.project = config.project.encode("utf8")
        self.version = config.entity_key_serialization_version

    def _keys(self, read: RowRead) -> list[bytes]:
        """Redis keys of the rows: ``serialize_entity_key`` + project. String join keys
        (all of homerec's) are serialized here, as Feast does (version 3: key count, then
        each sorted key name and each value as type, length, bytes); others by Feast."""
        if self.version != 3 or any(
            self.types.get(key, ValueType.STRING) != ValueType.STRING for key in read.keys
        ):
            return [
                serialize_entity_key(key, self.version) + self.project
                for key in entity_keys(read, self.types)
            ]
        order = sorted(range(len(read.keys)), key=lambda i: read.keys[i])
        header = struct.pack("<I", len(order)) + b"".join(
            _string_key_part(read.keys[i]) for i in order
        )
        return [
            header + b"".join(_string_key_part(str(row[i])) for i in order) + self.project
            for row in read.rows
        ]

    def read(self, reads: Sequence[RowRead]) -> list[RowsRead]:
        commands: list[tuple[bytes, list]] = []
        spans: list[tuple[int, int]] = []
        for read in reads:
            name = _versioned_fv_name(read.view, self.store.config)
            _, fields = self.redis._generate_hset_keys_for_features(
                read.view, list(read.features), fv_name_override=name
            )  # feature fields, then the write-time field
            start = len(commands)
            commands += [(key, fields) for key in self._keys(read)]
            spans.append((start, len(commands)))
        replies = self.redis._read_hash_fields(self.store.config, commands) if commands else []
        return [
            self._decoded(read, replies[start:end])
            for read, (start, end) in zip(reads, spans, strict=True)
        ]

    def _decoded(self, read: RowRead, replies: Sequence[Sequence[Any]]) -> RowsRead:
        missing = sum(reply[-1] is None for reply in replies)
        columns = {
            name: _decode_column([reply[j] for reply in replies], is_numeric(read.view, name))
            for j, name in enumerate(read.features)
        }
        return RowsRead(columns, missing)


def _decode_column(raw: list[bytes | None], numeric: bool) -> np.ndarray:
    """Serialized ``ValueProto`` bytes (None or empty when missing) as a column."""
    if numeric:
        fast = _decode_numbers(raw)
        if fast is not None:
            return fast
    values = [Value() if not data else Value.FromString(data) for data in raw]
    return column(decoded(values), numeric)


def _decode_numbers(raw: list[bytes | None]) -> np.ndarray | None:
    """A column of doubles or of int64s (NaN where missing), decoded by numpy; None when
    the values are of any other kind (then they are parsed one by one)."""
    result = np.full(len(raw), np.nan)
    present = [i for i, data in enumerate(raw) if data]
    if not present:
        return result
    values: list[bytes] = [bytes(raw[i] or b"") for i in present]
    where = np.array(present, dtype=np.intp)
    if all(len(data) == 9 and data[0] == _DOUBLE_TAG for data in values):
        result[where] = np.frombuffer(b"".join(values), dtype=[("tag", "u1"), ("value", "<f8")])[
            "value"
        ]
        return result
    if all(data[0] == _INT64_TAG and data[-1] < 0x80 for data in values):
        lengths = np.fromiter((len(data) - 1 for data in values), dtype=np.intp)
        if lengths.max() > 10:
            return None  # more than one field: not a lone varint
        result[where] = _varints(values, lengths)
        return result
    return None


def _varints(values: list[bytes], lengths: np.ndarray) -> np.ndarray:
    """The varint after the tag byte of each value, as float64 (two's complement int64)."""
    width = int(lengths.max())
    padded = np.zeros((len(values), width), dtype=np.uint64)
    flat = np.frombuffer(b"".join(data[1:] for data in values), dtype=np.uint8)
    rows = np.repeat(np.arange(len(values)), lengths)
    starts = np.cumsum(lengths) - lengths
    columns = np.arange(len(flat)) - np.repeat(starts, lengths)
    padded[rows, columns] = flat
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    unsigned = np.bitwise_or.reduce((padded & np.uint64(0x7F)) << shifts, axis=1)
    return unsigned.astype(np.uint64).view(np.int64).astype(np.float64)


def online_rows(store: FeatureStore) -> FeastRows:
    """The row reader for ``store``'s online store."""
    if isinstance(store._get_provider().online_store, RedisOnlineStore):
        return RedisRows(store)
    return FeastRows(store)
