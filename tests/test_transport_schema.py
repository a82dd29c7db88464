"""Wire schema: arrays round-trip exactly, bad input is refused with a clear error, never a crash."""

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_servers.wire import packb
from serl.transport.schema import (
    SCHEMA_VERSION,
    ProtocolError,
    SchemaMismatch,
    config_hash,
    decode_message,
    decode_transition,
    encode_message,
)

from test_wire import DTYPES, _ext  # noqa: E402  (the wire's own test builds raw array frames)


def _raw_transition(value) -> bytes:
    return msgpack.packb({"x": value}, use_bin_type=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_arrays_of_every_allowed_dtype_round_trip(dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((3, 4, 2)) * 100).astype(dtype)
    out = decode_transition(packb({"a": array, "scalar": array.reshape(-1)[0]}))
    assert out["a"].dtype == array.dtype and out["a"].shape == (3, 4, 2)
    np.testing.assert_array_equal(out["a"], array)
    scalar = np.asarray(out["scalar"])  # float64 scalars are Python floats and travel as msgpack floats
    assert scalar.shape == () and scalar.dtype == array.dtype and scalar == array.reshape(-1)[0]


def test_nested_observation_dict_round_trips_with_plain_scalars():
    obs = {"state": np.arange(7, dtype=np.float32), "wrist": np.full((128, 128, 3), 7, np.uint8)}
    transition = {
        "observations": obs,
        "next_observations": {"state": obs["state"] + 1, "wrist": obs["wrist"][::-1]},
        "actions": np.zeros((7,), np.float32),
        "rewards": 1.5,
        "dones": True,
        "info": {"intervened": False, "name": "x", "none": None, "list": [1, 2.0]},
        "empty": np.zeros((0, 3), np.float32),
    }
    out = decode_transition(packb(transition))
    np.testing.assert_array_equal(out["next_observations"]["wrist"], obs["wrist"][::-1])
    assert out["observations"]["wrist"].shape == (128, 128, 3)
    assert out["rewards"] == 1.5 and out["dones"] is True
    assert out["info"] == {"intervened": False, "name": "x", "none": None, "list": [1, 2.0]}
    assert out["empty"].shape == (0, 3)


def test_non_contiguous_and_big_endian_arrays_arrive_as_little_endian_copies():
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    out = decode_transition(packb({"t": base.T, "b": base}))
    np.testing.assert_array_equal(out["t"], base.T)
    assert out["b"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out["b"], base)


@pytest.mark.parametrize(
    "transition, field",
    [
        ({"obs": {"bad": np.array([object()], dtype=object)}}, "transition['obs']['bad']"),
        ({"obs": {1: np.zeros(3)}}, "key 1 is not a str"),
        ({"s": {1, 2}}, "transition['s']"),
        ({"c": np.zeros(2, np.complex64)}, "transition['c']"),
        ({"big": 2**70}, "transition['big']"),
    ],
)
def test_unsendable_values_raise_value_error_naming_the_field(transition, field):
    with pytest.raises(ValueError, match="cannot be sent|not allowed|not a str|does not fit") as info:
        packb(transition, what="transition")
    assert field in str(info.value)


def test_every_truncation_of_a_valid_message_is_a_protocol_error():
    data = packb({"obs": np.arange(12, dtype=np.float32).reshape(3, 4), "r": 1.0})
    for cut in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_transition(data[:cut])


@pytest.mark.parametrize(
    "payload, match",
    [
        (_raw_transition(_ext("|O", (1,), b"\0" * 8)), "dtype '|O' is not allowed"),
        (_raw_transition(_ext("<f4", (2, 2), b"\0" * 12)), "needs 16"),
        (_raw_transition(_ext("|b1", (2,), b"\x00\x02")), "bool array"),
        (_raw_transition(msgpack.ExtType(9, b"abc")), "unknown ext type 9"),
        (_raw_transition(_ext("<f4", (1,) * 40, b"\0" * 4)), "dims exceeds"),
        (msgpack.packb([1, 2, 3]), "must be a map"),
        (msgpack.packb({1: 2}), "undecodable"),
        (b"\xc1", "undecodable"),
        (packb({"x": 1}) + b"\x00", "undecodable"),
    ],
)
def test_malformed_transitions_are_protocol_errors(payload, match):
    with pytest.raises(ProtocolError, match=match):
        decode_transition(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(data):
    for decode in (decode_message, decode_transition):
        try:
            decode(data)
        except ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
        max_leaves=12,
    )
)
def test_random_trees_round_trip(tree):
    assert decode_transition(packb({"tree": tree}))["tree"] == tree


def test_messages_are_validated_field_by_field():
    ok = encode_message("ping", rid=1, actor_id="a", session="s")
    assert decode_message(ok)["type"] == "ping"
    for bad, match in [
        (encode_message("ping", rid="1", actor_id="a", session="s"), "'rid' must be int"),
        (encode_message("ping", rid=True, actor_id="a", session="s"), "'rid' must be int"),
        (encode_message("ping", rid=1, session="s"), "lacks field 'actor_id'"),
        (encode_message("launch", rid=1), "unexpected message type"),
        (encode_message("batch", rid=1, actor_id="a", session="s", seq=-1, n_items=0), "negative"),
        (encode_message("batch", rid=1, actor_id="a", session="s", seq=0, n_items=10**9), "out of range"),
        (msgpack.packb({"type": "ping"}), "schema_version"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            decode_message(bad)
    with pytest.raises(ProtocolError, match="unexpected message type"):
        decode_message(ok, expect=frozenset({"hello"}))


def test_other_schema_version_is_a_schema_mismatch_naming_both_versions():
    data = msgpack.packb({"schema_version": SCHEMA_VERSION + 1, "type": "hello"})
    with pytest.raises(SchemaMismatch, match=f"peer {SCHEMA_VERSION + 1} vs ours {SCHEMA_VERSION}"):
        decode_message(data)


def test_config_hash_is_stable_and_sensitive():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        lr: float = 3e-4
        cameras: tuple = ("front", "wrist")

    assert config_hash(Cfg()) == config_hash({"cameras": ["front", "wrist"], "lr": 3e-4})
    assert config_hash(Cfg()) != config_hash(Cfg(lr=1e-3))
    assert len(config_hash(Cfg())) == 64


def test_jax_arrays_travel_as_numpy_arrays():
    jnp = pytest.importorskip("jax.numpy")
    params = {"dense": {"kernel": jnp.ones((3, 2), jnp.float32), "bias": jnp.zeros((2,), jnp.float32)}}
    out = decode_transition(packb(params))
    assert isinstance(out["dense"]["kernel"], np.ndarray) and out["dense"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(out["dense"]["kernel"], np.ones((3, 2)))
