"""Field numbers of the request messages, read from the generated descriptors at import.

The wire kernels (`server._wire_kernels`) read the serialized request without the protobuf
runtime, so they must know where each column lies. They take every field number from here, and
here takes them from the descriptors `protoc` generated from `proto/reranker/v1/reranker.proto`:
renumbering a field in the proto moves the decoder with it. What the kernels cannot follow - a
column whose type or cardinality changes (say `repeated double` to `repeated float`) - stops the
import with a message naming the field, instead of decoding wrong numbers.

`KERNEL_FIELDS` is the int64 array the Candidates kernels take, indexed by the kernel module's
`F_*` constants; the scalar names are for the Python side of the decoder (`server.convert`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from server import _wire_kernels as wk
from server._gen.reranker.v1 import reranker_pb2 as pb

_F = FieldDescriptor


class ProtoLayoutError(RuntimeError):
    """The proto no longer has the shape the wire kernels read."""


def _repeated(field: FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6: `label` is deprecated
    return bool(is_repeated) if is_repeated is not None else field.label == _F.LABEL_REPEATED


def _field(message: Descriptor, name: str, kind: int, *, repeated: bool,
           message_type: Descriptor | None = None) -> FieldDescriptor:
    field = message.fields_by_name.get(name)
    where = f"{message.full_name}.{name}"
    if field is None:
        raise ProtoLayoutError(f"{where}: the wire decoder reads this field, and the proto has "
                               f"no such field any more")
    if field.type != kind or _repeated(field) != repeated:
        raise ProtoLayoutError(f"{where}: the wire decoder expects type {kind} "
                               f"({'repeated' if repeated else 'singular'}), the proto has type "
                               f"{field.type} ({'repeated' if _repeated(field) else 'singular'})")
    if message_type is not None and field.message_type is not message_type:
        raise ProtoLayoutError(f"{where}: the wire decoder expects a {message_type.full_name}, the "
                               f"proto has {field.message_type.full_name}")
    return field


def _map_of(message: Descriptor, name: str, value_type: Descriptor) -> tuple[int, int, int]:
    """(field number, entry key number, entry value number) of map<string, value_type> `name`."""
    field = _field(message, name, _F.TYPE_MESSAGE, repeated=True)
    entry = field.message_type
    if not entry.GetOptions().map_entry:
        raise ProtoLayoutError(f"{message.full_name}.{name}: the wire decoder expects a map field")
    key = _field(entry, "key", _F.TYPE_STRING, repeated=False)
    value = _field(entry, "value", _F.TYPE_MESSAGE, repeated=False, message_type=value_type)
    return field.number, key.number, value.number


class Layout(NamedTuple):
    """The field numbers the decoder reads, from one generated module's descriptors."""

    request_candidates: int
    item_ids: int
    scores: int
    attributes: int
    numeric: int
    map_key: int
    map_value: int
    double_values: int
    string_values: int
    string_codes: int
    embedding_values: int
    string_dictionary: int

    def kernel_fields(self) -> np.ndarray:
        """The int64 array the Candidates kernels take (indexed by `server._wire_kernels.F_*`)."""
        fields = np.empty(wk.F_COUNT, dtype=np.int64)
        fields[wk.F_ITEM_IDS] = self.item_ids
        fields[wk.F_SCORES] = self.scores
        fields[wk.F_ATTRIBUTES] = self.attributes
        fields[wk.F_NUMERIC] = self.numeric
        fields[wk.F_MAP_KEY] = self.map_key
        fields[wk.F_MAP_VALUE] = self.map_value
        fields[wk.F_DOUBLE_VALUES] = self.double_values
        fields[wk.F_STRING_CODES] = self.string_codes
        fields[wk.F_STRING_VALUES] = self.string_values
        fields[wk.F_STRING_DICTIONARY] = self.string_dictionary
        return fields


def read_layout(messages) -> Layout:
    """The Layout of a generated `reranker_pb2` module (`messages`); ProtoLayoutError when a
    field the decoder reads is missing or has another type than the kernels can read."""
    candidates = messages.Candidates.DESCRIPTOR
    double = messages.DoubleColumn.DESCRIPTOR
    string = messages.StringColumn.DESCRIPTOR
    embeddings = messages.Embeddings.DESCRIPTOR
    scores, key, value = _map_of(candidates, "scores", double)
    attributes, *attributes_entry = _map_of(candidates, "attributes", string)
    numeric, *numeric_entry = _map_of(candidates, "numeric", double)
    # protobuf fixes map entries at key = 1, value = 2; checked rather than assumed
    if [key, value] != attributes_entry or [key, value] != numeric_entry:
        raise ProtoLayoutError("Candidates maps: entry key / value numbers differ between maps")
    item_ids = _field(candidates, "item_ids", _F.TYPE_STRING, repeated=True).number
    if len({item_ids, scores, attributes, numeric}) != 4:
        raise ProtoLayoutError("Candidates: item_ids, scores, attributes and numeric share a number")
    _field(candidates, "embeddings", _F.TYPE_MESSAGE, repeated=False, message_type=embeddings)
    return Layout(
        request_candidates=_field(messages.RerankRequest.DESCRIPTOR, "candidates", _F.TYPE_MESSAGE,
                                  repeated=False, message_type=candidates).number,
        item_ids=item_ids, scores=scores, attributes=attributes, numeric=numeric, map_key=key,
        map_value=value,
        double_values=_field(double, "values", _F.TYPE_DOUBLE, repeated=True).number,
        string_values=_field(string, "values", _F.TYPE_STRING, repeated=True).number,
        string_codes=_field(string, "codes", _F.TYPE_UINT32, repeated=True).number,
        embedding_values=_field(embeddings, "values", _F.TYPE_FLOAT, repeated=True).number,
        string_dictionary=_field(string, "dictionary", _F.TYPE_STRING, repeated=True).number,
    )


#: The layout of the proto this server was built from, and the kernels' array of it.
LAYOUT = read_layout(pb)
KERNEL_FIELDS = LAYOUT.kernel_fields()
REQUEST_CANDIDATES = LAYOUT.request_candidates
ITEM_IDS = LAYOUT.item_ids
SCORES = LAYOUT.scores
ATTRIBUTES = LAYOUT.attributes
NUMERIC = LAYOUT.numeric
DOUBLE_VALUES = LAYOUT.double_values
STRING_VALUES = LAYOUT.string_values
STRING_CODES = LAYOUT.string_codes
EMBEDDING_VALUES = LAYOUT.embedding_values
STRING_DICTIONARY = LAYOUT.string_dictionary
