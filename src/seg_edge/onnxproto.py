"""Read an ONNX file's metadata and declared graph inputs/outputs without onnx or onnxruntime.

The protobuf is walked directly over an mmap: ModelProto.metadata_props and the graph's
input/output ValueInfos are decoded; nodes and initializers (the weights) are skipped by their
length, never parsed. This keeps the torch-free runtime free of ``onnx`` too.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg_edge.errors import ArtifactError

ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 3: "int8", 6: "int32", 7: "int64"}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as the ONNX file declares it (no inference, no onnx import).

    ``elem_type`` is the ONNX ``TensorProto.DataType`` (1 = float32, 0 = not declared); ``dims``
    holds an int for a fixed dimension, a string for a symbolic one and None for an unnamed
    unknown one; ``dims`` itself is None when the file declares no shape.
    """

    name: str
    elem_type: int = 0
    dims: tuple[int | str | None, ...] | None = None

    def describe(self) -> str:
        """``image float32 [batch, 5, x, y, z]``: how info and errors show it."""
        dims = "?" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return f"{self.name} {ELEM_TYPES.get(self.elem_type, f'type {self.elem_type}')} {dims}"


@dataclass(frozen=True)
class OnnxHeader:
    """What ``read_onnx_header`` reads: metadata_props and the graph's declared inputs/outputs."""

    metadata: dict[str, str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


# --------------------------------------------------------------------------- protobuf walker

def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: Any, pos: int, end: int):
    """Yield (field_number, wire_type, value_or_span) over one protobuf message; spans are not parsed."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            yield number, wire, None
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("length past end")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("message overruns its end")


def _spans(buf: Any, span: tuple[int, int], number: int):
    """The spans of every length-delimited field ``number`` of the message at ``span``."""
    return [value for n, wire, value in _fields(buf, *span) if n == number and wire == 2]


def _text(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8")


# onnx.proto field numbers (checked against onnx's descriptors in tests/unit/test_card_graph.py)
_MODEL_GRAPH, _MODEL_METADATA_PROPS = 7, 14     # ModelProto.graph, .metadata_props
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12            # GraphProto.input, .output (initializers: 5, skipped)
_VALUE_NAME, _VALUE_TYPE = 1, 2                 # ValueInfoProto.name, .type
_TYPE_TENSOR = 1                                # TypeProto.tensor_type
_TENSOR_ELEM, _TENSOR_SHAPE = 1, 2              # TypeProto.Tensor.elem_type, .shape
_SHAPE_DIM = 1                                  # TensorShapeProto.dim
_DIM_VALUE, _DIM_PARAM = 1, 2                   # TensorShapeProto.Dimension.dim_value, .dim_param


def _dim(buf: Any, span: tuple[int, int]) -> int | str | None:
    value: int | str | None = None
    for number, wire, item in _fields(buf, *span):
        if number == _DIM_VALUE and wire == 0:
            value = item - (1 << 64) if item >= 1 << 63 else item  # int64 two's complement
        elif number == _DIM_PARAM and wire == 2:
            value = _text(buf, item)
    return value


def _value_info(buf: Any, span: tuple[int, int]) -> TensorInfo:
    name, elem, dims = "", 0, None
    for number, wire, item in _fields(buf, *span):
        if number == _VALUE_NAME and wire == 2:
            name = _text(buf, item)
        elif number == _VALUE_TYPE and wire == 2:
            for tensor in _spans(buf, item, _TYPE_TENSOR):
                for n, w, value in _fields(buf, *tensor):
                    if n == _TENSOR_ELEM and w == 0:
                        elem = value
                    elif n == _TENSOR_SHAPE and w == 2:
                        dims = tuple(_dim(buf, d) for d in _spans(buf, value, _SHAPE_DIM))
    return TensorInfo(name, elem, dims)


def read_onnx_header(path: Path) -> OnnxHeader:
    """An ONNX file's metadata_props and graph inputs/outputs; ArtifactError if it is not ONNX."""
    props: dict[str, str] = {}
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    has_graph = False
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number == _MODEL_GRAPH and wire == 2:
                    has_graph = True
                    for n, w, span in _fields(buf, *value):  # nodes and initializers: skipped by length
                        if w == 2 and n in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                            (inputs if n == _GRAPH_INPUT else outputs).append(_value_info(buf, span))
                elif number == _MODEL_METADATA_PROPS and wire == 2:
                    entry = {n: _text(buf, s) for n, w, s in _fields(buf, *value) if w == 2}
                    props[entry.get(1, "")] = entry.get(2, "")
    except (ValueError, UnicodeDecodeError, TypeError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    if not has_graph:
        raise ArtifactError(f"{path}: not an ONNX model (no graph found)")
    return OnnxHeader(props, tuple(inputs), tuple(outputs))


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """Return an ONNX file's ``metadata_props`` as a dict; ArtifactError if it is not ONNX."""
    return read_onnx_header(path).metadata


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, data: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(data)) + data


def _top_fields(buf: Any):
    """Yield (field_number, wire_type, value_span, (start, stop)) over a message's top level: the raw
    byte range of each field, key included, so it can be copied as it is."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        span = None
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            span = (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {wire}")
        if number == 0 or pos > end:
            raise ValueError("malformed field")
        yield number, wire, span, (start, pos)


def with_metadata(path: Path, key: str, value: str) -> bytes:
    """The bytes of the ONNX file at ``path`` with metadata entry ``key`` set to ``value`` (replaced if
    present); everything else byte for byte as it was. ArtifactError if the file is not ONNX."""
    try:
        buf = Path(path).read_bytes()
        kept = []
        for number, wire, span, (start, stop) in _top_fields(buf):
            if number == _MODEL_METADATA_PROPS and wire == 2:
                entry = {n: _text(buf, s) for n, w, s in _fields(buf, *span) if w == 2}
                if entry.get(1) == key:
                    continue
            kept.append(buf[start:stop])
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    prop = _string_field(1, key.encode("utf-8")) + _string_field(2, value.encode("utf-8"))
    return b"".join(kept) + _string_field(_MODEL_METADATA_PROPS, prop)
