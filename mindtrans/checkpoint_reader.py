"""Read a MindSpore `.ckpt` file in pure Python, checking every field before trusting it.

MindSpore's native loader trusts the file: a tensor whose dims claim more than its bytes
hold crashes the process (a segfault), negative dims abort it in glibc. A checkpoint from
someone else is untrusted input, so mindtrans parses the format itself and never hands an
unchecked file to native code.

The format (MindSpore's ``checkpoint.proto``) is a sequence of protobuf records::

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; TensorProto tensor = 2; MapTensorProto maptensor = 3; }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

A large tensor is split into several Values with the same tag and full dims, whose
contents concatenate. Strings (``tensor_type`` "str") hold NumPy UTF-32 text.
"""
import numpy as np

DTYPES = {  # MindSpore's tensor_type -> NumPy dtype
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32, "UInt64": np.uint64, "Bool": np.bool_,
}  # fmt: skip
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 34  # far beyond any model mindtrans builds; a bigger claim is a crafted file


class CheckpointFormatError(ValueError):
    """The file is not a well-formed checkpoint; the message says what is wrong."""


def _varint(buf: bytes, pos: int) -> tuple:
    """(value, next position) of the base-128 varint at `pos`."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated (a number runs past the end of the file)")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError("malformed (a number longer than 10 bytes)")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise CheckpointFormatError(f"truncated (field {number} claims {length} bytes past the end)")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise CheckpointFormatError(f"not a MindSpore checkpoint (field {number} has wire type {wire})")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(buf: bytes, tag: str) -> tuple:
    """(dims, tensor_type, content) of one TensorProto."""
    dims, dtype, content = [], None, None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dims.append(_signed(value))
        elif number == 1:  # packed
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(_signed(dim))
        elif number == 2 and wire == 2:
            dtype = value.decode("utf-8", "replace")
        elif number == 3 and wire == 2:
            content = value
        else:
            raise CheckpointFormatError(f"tensor {tag!r} has an unexpected field {number}")
    if dtype is None or content is None:
        raise CheckpointFormatError(f"tensor {tag!r} lacks its type or its data")
    return dims, dtype, content


def _records(buf: bytes):
    """Yield (tag, dims, tensor_type, content) for every Value in the file, slices separately."""
    for number, wire, value in _fields(buf):
        if number != 1 or wire != 2:
            raise CheckpointFormatError(f"not a MindSpore checkpoint (top-level field {number})")
        tag, tensor = None, None
        for inner, inner_wire, payload in _fields(value):
            if inner == 1 and inner_wire == 2:
                tag = payload.decode("utf-8", "replace")
            elif inner == 2 and inner_wire == 2:
                tensor = payload
            else:
                raise CheckpointFormatError(f"unsupported checkpoint entry (field {inner}: a map tensor?)")
        if tag is None or tensor is None:
            raise CheckpointFormatError("an entry has no name or no tensor")
        yield (tag, *_tensor(tensor, tag))


def _array(tag: str, dims: list, dtype: str, content: bytes):
    """The checked NumPy array (or str, for a string entry) of one tensor."""
    if dtype == "str":
        try:
            return content.decode("utf-32-le")
        except UnicodeDecodeError:
            raise CheckpointFormatError(f"string {tag!r} is not UTF-32 text") from None
    if dtype not in DTYPES:
        raise CheckpointFormatError(f"tensor {tag!r} has an unknown type {dtype!r}")
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise CheckpointFormatError(f"tensor {tag!r} has invalid dims {dims}")
    elements = int(np.prod(dims, dtype=object)) if dims else 1
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if elements > MAX_ELEMENTS or elements * itemsize != len(content):
        raise CheckpointFormatError(f"tensor {tag!r} claims shape {tuple(dims)} of {dtype} "
                                    f"({elements * itemsize} bytes) but holds {len(content)} bytes")
    return np.frombuffer(content, dtype=DTYPES[dtype]).reshape(dims).copy()


def read_checkpoint(path) -> dict:
    """name -> NumPy array (or str) of every entry of the checkpoint at `path`.

    Raises CheckpointFormatError (a ValueError) for anything malformed: truncated records,
    unknown fields or types, negative dims, a size that disagrees with the bytes, a name
    given twice with different shapes.
    """
    with open(path, "rb") as f:
        buf = f.read()
    if not buf:
        raise CheckpointFormatError("empty file")
    parts, kinds = {}, {}
    for tag, dims, dtype, content in _records(buf):
        if tag in kinds and kinds[tag] != (dims, dtype):
            raise CheckpointFormatError(f"tensor {tag!r} appears twice with different shapes or types")
        kinds[tag] = (dims, dtype)
        parts.setdefault(tag, []).append(content)
    return {tag: _array(tag, *kinds[tag], b"".join(chunks)) for tag, chunks in parts.items()}
