"""The shared msgpack codec: arrays and camera frames round-trip exactly; anything malformed is a ValueError."""

import struct

import msgpack
import numpy as np
import pytest

from robot_servers.wire import (
    ARRAY_EXT,
    MAX_DEPTH,
    WireFormatError,
    decode_images,
    encode_images,
    packb,
    unpackb,
)

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]


def _ext(dtype: str, shape: tuple, data: bytes) -> msgpack.ExtType:
    header = struct.pack(f"<B{len(dtype)}sB{len(shape)}Q", len(dtype), dtype.encode(), len(shape), *shape)
    return msgpack.ExtType(ARRAY_EXT, header + data)


def _nested(depth: int):
    tree = 0
    for _ in range(depth):
        tree = [tree]
    return tree


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)])
def test_arrays_of_every_allowed_dtype_round_trip(dtype, shape):
    array = np.asarray(np.random.default_rng(0).random(shape) * 100).astype(dtype)  # 0-d stays an array
    out = unpackb(packb({"a": array}))["a"]
    assert isinstance(out, np.ndarray) and out.dtype == array.dtype and out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_plain_values_and_nested_trees_round_trip():
    tree = {"n": None, "b": True, "i": -3, "f": 1.5, "s": "x", "raw": b"\x00\x01", "l": [1, [2, {"k": "v"}]]}
    assert unpackb(packb(tree)) == tree


def test_big_endian_and_strided_arrays_arrive_as_little_endian_copies():
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    out = unpackb(packb({"b": base, "t": base.T}))
    assert out["b"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(out["b"], base)
    np.testing.assert_array_equal(out["t"], base.T)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"x": np.array([object()], dtype=object)}, r"message\['x'\]: dtype object is not allowed"),
        ({"x": np.zeros(2, np.complex64)}, "complex64 is not allowed"),
        ({"x": np.array(["a"])}, "is not allowed"),
        ({1: 2}, "key 1 is not a str"),
        ({"x": {1, 2}}, "type set cannot be sent"),
        ({"x": 2**70}, "does not fit 64 bits"),
        ({"x": np.zeros((1,) * 17)}, "17 dims exceeds"),
        ({"x": _nested(MAX_DEPTH + 1)}, f"nested deeper than {MAX_DEPTH}"),
    ],
)
def test_unsendable_values_are_refused_naming_the_field(obj, match):
    with pytest.raises(ValueError, match=match):
        packb(obj)


@pytest.mark.parametrize(
    "data, match",
    [
        (msgpack.packb({"x": _ext("|O", (1,), b"\0" * 8)}), "dtype '|O' is not allowed"),
        (msgpack.packb({"x": _ext("<f4", (2, 2), b"\0" * 12)}), "needs 16"),
        (msgpack.packb({"x": _ext("<f4", (2,), b"\0" * 12)}), "needs 8"),
        (msgpack.packb({"x": _ext("|b1", (2,), b"\x00\x02")}), "bool array"),
        (msgpack.packb({"x": _ext("<f4", (1,) * 40, b"\0" * 4)}), "dims exceeds"),
        (msgpack.packb({"x": msgpack.ExtType(9, b"abc")}), "unknown ext type 9"),
        (msgpack.packb({"x": msgpack.ExtType(ARRAY_EXT, b"\x03")}), "truncated"),
        (msgpack.packb(_nested(MAX_DEPTH + 1)), f"nested deeper than {MAX_DEPTH}"),
        (msgpack.packb({b"k": 1}, use_bin_type=True), "key b'k' is not a str"),
        (msgpack.packb({1: 2}), "undecodable"),
        (b"\xc1", "undecodable"),
        (packb({"x": 1}) + b"\x00", "undecodable"),
    ],
)
def test_malformed_bytes_are_wire_format_errors(data, match):
    with pytest.raises(WireFormatError, match=match):
        unpackb(data)
    assert issubclass(WireFormatError, ValueError)


def test_every_truncation_is_a_wire_format_error():
    data = packb({"obs": np.arange(12, dtype=np.float32).reshape(3, 4), "r": 1.0})
    for cut in range(len(data)):
        with pytest.raises(WireFormatError):
            unpackb(data[:cut])


def test_camera_frames_round_trip_as_writable_arrays_with_timestamps():
    front = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    depth = np.linspace(0, 2, 12, dtype=np.float32).reshape(3, 4)
    frames = decode_images(unpackb(packb(encode_images({"front": (front, 12.5), "depth": (depth, 13)}))))
    assert set(frames) == {"front", "depth"}
    np.testing.assert_array_equal(frames["front"][0], front)
    np.testing.assert_array_equal(frames["depth"][0], depth)
    assert frames["front"][1] == 12.5 and frames["depth"][1] == 13.0 and isinstance(frames["depth"][1], float)
    frames["front"][0][0, 0, 0] = 7  # consumers may draw on frames
    assert decode_images({}) == {}


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"front": {"frame": _ext("|O", (1, 1), b"\0" * 8), "timestamp": 1.0}}, "dtype '|O' is not allowed"),
        ({"front": {"frame": _ext("|u1", (2, 2, 3), b"\0" * 11), "timestamp": 1.0}}, "needs 12"),
    ],
)
def test_frames_with_object_dtype_or_wrong_size_are_refused(payload, match):
    with pytest.raises(WireFormatError, match=match):
        decode_images(unpackb(msgpack.packb(payload, use_bin_type=True)))


@pytest.mark.parametrize(
    "item, match",
    [
        ({"frame": np.zeros((2, 2), np.uint8)}, "'frame' and 'timestamp'"),
        ({"frame": np.zeros((2, 2), np.uint8), "timestamp": 1.0, "extra": 1}, "'frame' and 'timestamp'"),
        ({"frame": b"\0" * 4, "timestamp": 1.0}, "frame must be an array"),
        ({"frame": np.zeros(4, np.uint8), "timestamp": 1.0}, "2 or 3 dims"),
        ({"frame": np.zeros((1, 1, 1, 1), np.uint8), "timestamp": 1.0}, "2 or 3 dims"),
        ({"frame": np.zeros((2, 2), np.uint8), "timestamp": "now"}, "timestamp must be a finite number"),
        ({"frame": np.zeros((2, 2), np.uint8), "timestamp": True}, "timestamp must be a finite number"),
        ({"frame": np.zeros((2, 2), np.uint8), "timestamp": float("nan")}, "timestamp must be a finite number"),
        ([1, 2], "'frame' and 'timestamp'"),
    ],
)
def test_malformed_image_entries_are_refused_naming_the_camera(item, match):
    payload = unpackb(packb({"front": item}))
    with pytest.raises(WireFormatError, match=match) as info:
        decode_images(payload)
    assert "camera 'front'" in str(info.value)


def test_images_payload_must_be_a_map():
    with pytest.raises(WireFormatError, match="images must be a map"):
        decode_images([1, 2])
    with pytest.raises(WireFormatError, match="camera name 1"):
        decode_images({1: {"frame": np.zeros((2, 2)), "timestamp": 0.0}})
