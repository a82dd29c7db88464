"""msgpack codec with numpy arrays as an ext type; shared by the robot server, its client and the transport.

Arrays travel as msgpack ext type ``ARRAY_EXT`` whose payload is
``[len(dtype) u8][dtype str][ndim u8][ndim × dim u64 LE][raw C-order bytes]``. Only plain numeric and bool
dtypes are allowed and trees are at most ``MAX_DEPTH`` deep, so nothing on the wire can make the receiver
build Python objects other than dicts (str keys), lists, str, bytes, numbers, bools, None and numpy arrays.
No pickle anywhere.

    data = packb({"obs": np.zeros((3, 4), np.float32), "reward": 1.0})
    obj = unpackb(data)                          # arrays come back as read-only numpy arrays
    payload = packb(encode_images({"front": (frame, timestamp)}))
    frames = decode_images(unpackb(payload))     # {"front": (frame, timestamp)}
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

ARRAY_EXT = 1
MAX_NDIM = 16
MAX_DEPTH = 32
IMAGE_NDIMS = (2, 3)  # (H, W) or (H, W, C)

ALLOWED_DTYPES = frozenset(
    np.dtype(name).str
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)

_PLAIN = (bool, int, float, str, bytes, type(None))
_DTYPE_ERROR = "is not allowed on the wire (allowed: bool, ints, uints, floats)"


class WireFormatError(ValueError):
    """Bytes or a decoded payload that do not follow the wire format."""


# ---------------------------------------------------------------- encoding


def _is_array_like(obj: Any) -> bool:
    return isinstance(obj, (np.ndarray, np.generic)) or (hasattr(obj, "__array__") and hasattr(obj, "dtype"))


def _sendable_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf" and dtype.newbyteorder("<").str in ALLOWED_DTYPES


def _as_wire_array(obj: Any) -> np.ndarray:
    array = np.asarray(obj)
    dtype = array.dtype
    if dtype.str not in ALLOWED_DTYPES:
        if not _sendable_dtype(dtype):
            raise ValueError(f"dtype {dtype} {_DTYPE_ERROR}")
        array = array.astype(dtype.newbyteorder("<"))
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
    elif _is_array_like(obj):
        array = _as_wire_array(obj)
        dtype_str = array.dtype.str.encode()
        header = struct.pack(f"<B{len(dtype_str)}sB{array.ndim}Q", len(dtype_str), dtype_str, array.ndim, *array.shape)
        out.append(_ext_header(len(header) + array.nbytes) + header)
        if array.size:
            out.append(array.reshape(-1).view(np.uint8).data)
    else:
        raise TypeError(f"type {type(obj).__name__} cannot be sent")


def _find_unencodable(obj: Any, path: str, depth: int = 0) -> str | None:
    """Path and reason of the first leaf that cannot be encoded, for a clear error."""
    if depth > MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH}"
    kind = type(obj)
    if kind is np.ndarray:  # the common leaf first: this walk runs on every send
        if _sendable_dtype(obj.dtype) and obj.ndim <= MAX_NDIM:
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
    if _is_array_like(obj):
        dtype = np.dtype(obj.dtype)
        if not _sendable_dtype(dtype):
            return f"{path}: dtype {dtype} {_DTYPE_ERROR}"
        if np.ndim(obj) > MAX_NDIM:
            return f"{path}: array with {np.ndim(obj)} dims exceeds the limit of {MAX_NDIM}"
        return None
    return f"{path}: type {type(obj).__name__} cannot be sent"


def check_encodable(obj: Any, what: str) -> None:
    """Raise ValueError naming the offending field (as ``what[...]``) if ``obj`` cannot travel."""
    problem = _find_unencodable(obj, what)
    if problem:
        raise ValueError(problem)


_thread_state = threading.local()


def packb(obj: Any, what: str = "message") -> bytes:
    """Encode ``obj`` (dicts with str keys, lists, scalars, numpy/jax arrays) to msgpack bytes.

    Raises ValueError naming the offending field (as ``what[...]``) when something cannot travel.
    """
    check_encodable(obj, what)
    packer = getattr(_thread_state, "packer", None)
    if packer is None:  # Packer is not thread-safe; one per thread
        packer = _thread_state.packer = msgpack.Packer(use_bin_type=True)
    chunks: list = []
    _encode(obj, chunks, packer)
    return b"".join(chunks)


# ---------------------------------------------------------------- decoding


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != ARRAY_EXT:
        raise WireFormatError(f"unknown ext type {code}")
    view = memoryview(data)
    if len(view) < 2:
        raise WireFormatError("truncated array header")
    dtype_len = view[0]
    pos = 1 + dtype_len
    if len(view) < pos + 1:
        raise WireFormatError("truncated array header")
    dtype_str = bytes(view[1:pos]).decode("ascii", errors="replace")
    if dtype_str not in ALLOWED_DTYPES:
        raise WireFormatError(f"array dtype {dtype_str!r} is not allowed")
    ndim = view[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise WireFormatError(f"array with {ndim} dims exceeds the limit of {MAX_NDIM}")
    if len(view) < pos + 8 * ndim:
        raise WireFormatError("truncated array shape")
    shape = struct.unpack_from(f"<{ndim}Q", data, pos)
    pos += 8 * ndim
    dtype = np.dtype(dtype_str)
    count = math.prod(shape)
    if count * dtype.itemsize != len(view) - pos:
        raise WireFormatError(
            f"array data is {len(view) - pos} bytes, shape {tuple(shape)} of {dtype} needs {count * dtype.itemsize}"
        )
    if dtype.kind == "b" and count and np.frombuffer(data, np.uint8, count, pos).max() > 1:
        raise WireFormatError("bool array holds values other than 0 and 1")
    return np.frombuffer(data, dtype, count, pos).reshape(shape)


def _check_tree(obj: Any, what: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise WireFormatError(f"{what}: nested deeper than {MAX_DEPTH}")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise WireFormatError(f"{what}: key {key!r} is not a str")
            _check_tree(value, f"{what}[{key!r}]", depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _check_tree(value, f"{what}[{i}]", depth + 1)
    elif not (obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray))):
        raise WireFormatError(f"{what}: unexpected {type(obj).__name__}")


def unpackb(data: bytes | memoryview, what: str = "message") -> Any:
    """Decode msgpack bytes from ``packb``; arrays come back as read-only numpy arrays over ``data``.

    Anything malformed (undecodable bytes, disallowed dtypes, sizes that do not match the shape, non-str
    keys, nesting deeper than ``MAX_DEPTH``) raises WireFormatError, a ValueError, and nothing else.
    """
    try:
        obj = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True, use_list=True)
    except WireFormatError:
        raise
    except Exception as e:  # msgpack raises several unrelated types on bad input; all mean "bad message"
        raise WireFormatError(f"undecodable msgpack ({type(e).__name__}: {e})") from None
    _check_tree(obj, what)
    return obj


# ---------------------------------------------------------------- camera frames


def encode_images(frames: Mapping[str, tuple[np.ndarray, float]]) -> dict[str, dict[str, Any]]:
    """``{camera: {"frame": array, "timestamp": float}}``, ready for ``packb``."""
    return {name: {"frame": np.asarray(frame), "timestamp": float(ts)} for name, (frame, ts) in frames.items()}


def decode_images(payload: Any) -> dict[str, tuple[np.ndarray, float]]:
    """Inverse of ``encode_images`` on ``unpackb`` output: ``{camera: (writable frame, timestamp)}``.

    Raises WireFormatError naming the camera for anything that is not a finite timestamp and a 2-d or
    3-d array of an allowed dtype.
    """
    if not isinstance(payload, Mapping):
        raise WireFormatError(f"images must be a map of camera name to frame, got {type(payload).__name__}")
    out = {}
    for name, item in payload.items():
        if not isinstance(name, str):
            raise WireFormatError(f"camera name {name!r} is not a str")
        if not isinstance(item, Mapping) or set(item) != {"frame", "timestamp"}:
            raise WireFormatError(f"camera {name!r}: expected a map with 'frame' and 'timestamp'")
        frame, timestamp = item["frame"], item["timestamp"]
        if not isinstance(frame, np.ndarray) or frame.dtype.str not in ALLOWED_DTYPES:
            raise WireFormatError(
                f"camera {name!r}: frame must be an array of an allowed dtype, got {type(frame).__name__}"
            )
        if frame.ndim not in IMAGE_NDIMS:
            raise WireFormatError(f"camera {name!r}: frame must have 2 or 3 dims, got shape {frame.shape}")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
            raise WireFormatError(f"camera {name!r}: timestamp must be a finite number, got {timestamp!r}")
        out[name] = (np.array(frame), float(timestamp))  # a copy: unpacked arrays are read-only views
    return out
