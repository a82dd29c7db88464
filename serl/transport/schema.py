"""Wire schema of the actor–learner transport: msgpack maps, numpy arrays as an ext type, strict decoding.

Every message is a msgpack map with ``schema_version`` and ``type``. Arrays travel as msgpack ext type
``ARRAY_EXT`` whose payload is ``[len(dtype) u8][dtype str][ndim u8][ndim × dim u64 LE][raw C-order bytes]``.
Only plain numeric and bool dtypes are allowed, so nothing on the wire can make the receiver build Python
objects other than dicts, lists, str, bytes, numbers, bools, None and numpy arrays. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
ARRAY_EXT = 1
MAX_NDIM = 16
MAX_DEPTH = 32

ALLOWED_DTYPES = frozenset(
    np.dtype(name).str
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)

# Field types of every message type; bool is rejected where int is asked (bool subclasses int in Python).
MESSAGE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    # actor -> learner
    "hello": {"rid": int, "actor_id": str, "session": str, "config_hash": str, "first_seq": int},
    "batch": {"rid": int, "actor_id": str, "session": str, "seq": int, "n_items": int},
    "ping": {"rid": int, "actor_id": str, "session": str},
    "get_weights": {"rid": int, "actor_id": str, "session": str},
    # learner -> actor
    "welcome": {"rid": int, "session": str, "acked": int, "learner_id": str, "weights_version": int},
    "reject": {"rid": int, "reason": str},
    "ack": {"rid": int, "session": str, "seq": int, "acked": int, "status": str},
    "pong": {"rid": int, "session": str, "acked": int, "learner_id": str, "weights_version": int},
    "error": {"rid": int, "code": str, "reason": str},
    "weights": {"learner_id": str, "version": int},  # plus "params": any pytree or bytes
}
MAX_ITEMS_PER_BATCH = 100_000


class ProtocolError(ValueError):
    """A message that does not follow the schema: undecodable, truncated, wrong types or disallowed dtypes."""


class SchemaMismatch(ProtocolError):
    """A well-formed message whose ``schema_version`` differs from ours."""

    def __init__(self, remote: Any, message: dict | None = None):
        super().__init__(f"schema version differs: peer {remote!r} vs ours {SCHEMA_VERSION}")
        self.remote = remote
        self.message = message


def config_hash(config: Any) -> str:
    """Stable sha256 hex digest of a config (dataclass, mapping or JSON-able value) for the handshake."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


def short_hash(value: str, n: int = 12) -> str:
    """A hash prefix for error messages ("1a2b3c…")."""
    return value[:n] + "…" if len(value) > n else value


# ---------------------------------------------------------------- encoding


def _as_wire_array(obj: Any) -> np.ndarray:
    array = np.asarray(obj)
    dtype = array.dtype
    if dtype.str not in ALLOWED_DTYPES:
        if dtype.kind in "biuf" and dtype.newbyteorder("<").str in ALLOWED_DTYPES:
            array = array.astype(dtype.newbyteorder("<"))
        else:
            raise ValueError(f"dtype {dtype} is not allowed on the wire (allowed: bool, ints, uints, floats)")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"array with {array.ndim} dims exceeds the limit of {MAX_NDIM}")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
    return array


def _ext_header(size: int) -> bytes:
    if size < 1 << 8:
        return struct.pack(">BBb", 0xC7, size, ARRAY_EXT)
    if size < 1 << 16:
        return struct.pack(">BHb", 0xC8, size, ARRAY_EXT)
    return struct.pack(">BIb", 0xC9, size, ARRAY_EXT)


def _encode(obj: Any, out: list, packer: msgpack.Packer) -> None:
    """Append msgpack chunks for ``obj`` to ``out``; array bytes go in as views, so one join copies them once."""
    if isinstance(obj, _PLAIN):
        out.append(packer.pack(obj))
    elif isinstance(obj, Mapping):
        out.append(packer.pack_map_header(len(obj)))
        for key, value in obj.items():
            out.append(packer.pack(key))
            _encode(value, out, packer)
    elif isinstance(obj, (list, tuple)):
        out.append(packer.pack_array_header(len(obj)))
        for value in obj:
            _encode(value, out, packer)
    elif isinstance(obj, (np.ndarray, np.generic)) or (hasattr(obj, "__array__") and hasattr(obj, "dtype")):
        array = _as_wire_array(obj)
        dtype_str = array.dtype.str.encode()
        header = struct.pack(f"<B{len(dtype_str)}sB{array.ndim}Q", len(dtype_str), dtype_str, array.ndim, *array.shape)
        out.append(_ext_header(len(header) + array.nbytes) + header)
        if array.size:
            out.append(array.reshape(-1).view(np.uint8).data)
    else:
        raise TypeError(f"type {type(obj).__name__} cannot be sent")


_PLAIN = (bool, int, float, str, bytes, type(None))


def _find_unencodable(obj: Any, path: str, depth: int = 0) -> str | None:
    """Path and reason of the first leaf that cannot be encoded, for a clear error."""
    if depth > MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH}"
    kind = type(obj)
    if kind is np.ndarray:  # the common leaf first: this walk runs on every send
        if obj.dtype.kind in "biuf" and obj.dtype.newbyteorder("<").str in ALLOWED_DTYPES and obj.ndim <= MAX_NDIM:
            return None
    elif kind in (float, bool, str, bytes) or obj is None:
        return None
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                return f"{path}: key {key!r} is not a str"
            found = _find_unencodable(value, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_unencodable(value, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(obj, _PLAIN):
        if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
            return f"{path}: int {obj} does not fit 64 bits"
        return None
    if isinstance(obj, (np.ndarray, np.generic)) or (hasattr(obj, "__array__") and hasattr(obj, "dtype")):
        dtype = np.dtype(obj.dtype)
        if dtype.kind not in "biuf" or dtype.newbyteorder("<").str not in ALLOWED_DTYPES:
            return f"{path}: dtype {dtype} is not allowed on the wire (allowed: bool, ints, uints, floats)"
        if np.ndim(obj) > MAX_NDIM:
            return f"{path}: array with {np.ndim(obj)} dims exceeds the limit of {MAX_NDIM}"
        return None
    return f"{path}: type {type(obj).__name__} cannot be sent"


def check_encodable(obj: Any, what: str) -> None:
    """Raise ValueError naming the offending field if ``obj`` cannot travel."""
    problem = _find_unencodable(obj, what)
    if problem:
        raise ValueError(problem)


def packb(obj: Any, what: str = "message") -> bytes:
    """Encode ``obj`` (dicts with str keys, lists, scalars, numpy/jax arrays) to msgpack bytes.

    Raises ValueError naming the offending field when something cannot travel.
    """
    check_encodable(obj, what)
    return _encode_bytes(obj)


def encode_message(msg_type: str, **fields: Any) -> bytes:
    """Encode a protocol message of ``msg_type`` with the current schema version."""
    return _encode_bytes({"schema_version": SCHEMA_VERSION, "type": msg_type, **fields})


_thread_state = threading.local()


def _encode_bytes(obj: Any) -> bytes:
    packer = getattr(_thread_state, "packer", None)
    if packer is None:  # Packer is not thread-safe; one per thread
        packer = _thread_state.packer = msgpack.Packer(use_bin_type=True)
    chunks: list = []
    _encode(obj, chunks, packer)
    return b"".join(chunks)


# ---------------------------------------------------------------- decoding


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != ARRAY_EXT:
        raise ProtocolError(f"unknown ext type {code}")
    view = memoryview(data)
    if len(view) < 2:
        raise ProtocolError("truncated array header")
    dtype_len = view[0]
    pos = 1 + dtype_len
    if len(view) < pos + 1:
        raise ProtocolError("truncated array header")
    dtype_str = bytes(view[1:pos]).decode("ascii", errors="replace")
    if dtype_str not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype_str!r} is not allowed")
    ndim = view[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise ProtocolError(f"array with {ndim} dims exceeds the limit of {MAX_NDIM}")
    if len(view) < pos + 8 * ndim:
        raise ProtocolError("truncated array shape")
    shape = struct.unpack_from(f"<{ndim}Q", data, pos)
    pos += 8 * ndim
    dtype = np.dtype(dtype_str)
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != len(view) - pos:
        raise ProtocolError(
            f"array data is {len(view) - pos} bytes, shape {tuple(shape)} of {dtype} needs {count * dtype.itemsize}"
        )
    if dtype.kind == "b" and count and np.frombuffer(data, np.uint8, count, pos).max() > 1:
        raise ProtocolError("bool array holds values other than 0 and 1")
    return np.frombuffer(data, dtype, count, pos).reshape(shape)


def unpackb(data: bytes | memoryview) -> Any:
    """Decode msgpack bytes; anything malformed raises ProtocolError (never another exception)."""
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True, use_list=True)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several unrelated types on bad input; all mean "bad message"
        raise ProtocolError(f"undecodable msgpack ({type(e).__name__}: {e})") from None


def check_tree(obj: Any, what: str, depth: int = 0) -> None:
    """Raise ProtocolError unless ``obj`` is a tree of str-keyed maps, lists and allowed leaves."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{what}: nested deeper than {MAX_DEPTH}")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{what}: key {key!r} is not a str")
            check_tree(value, f"{what}[{key!r}]", depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            check_tree(value, f"{what}[{i}]", depth + 1)
    elif not (obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray))):
        raise ProtocolError(f"{what}: unexpected {type(obj).__name__}")


def decode_message(data: bytes | memoryview, expect: frozenset[str] | None = None) -> dict:
    """Decode and validate one protocol message.

    Raises SchemaMismatch for another schema version, ProtocolError for anything else that is off.
    """
    msg = unpackb(data)
    if not isinstance(msg, dict):
        raise ProtocolError(f"message must be a map, got {type(msg).__name__}")
    version = msg.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("message has no integer 'schema_version'")
    if version != SCHEMA_VERSION:
        raise SchemaMismatch(version, msg)
    msg_type = msg.get("type")
    if msg_type not in MESSAGE_FIELDS or (expect is not None and msg_type not in expect):
        raise ProtocolError(f"unexpected message type {msg_type!r}")
    for name, kind in MESSAGE_FIELDS[msg_type].items():
        if name not in msg:
            raise ProtocolError(f"{msg_type} message lacks field {name!r}")
        value = msg[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{msg_type} field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if msg_type == "batch" and not 0 <= msg["n_items"] <= MAX_ITEMS_PER_BATCH:
        raise ProtocolError(f"batch field 'n_items' out of range: {msg['n_items']}")
    if msg_type in ("batch", "hello") and msg.get("seq", msg.get("first_seq")) < 0:
        raise ProtocolError(f"{msg_type} sequence number is negative")
    return msg


def decode_transition(data: bytes | memoryview) -> dict:
    """Decode one transition (a str-keyed map of arrays, scalars and nested maps)."""
    item = unpackb(data)
    if not isinstance(item, dict):
        raise ProtocolError(f"transition must be a map, got {type(item).__name__}")
    check_tree(item, "transition")
    return item
