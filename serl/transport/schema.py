"""Wire schema of the actor–learner transport: message types, schema version, strict decoding.

Every message is a msgpack map with ``schema_version`` and ``type``, encoded by ``robot_servers.wire`` (numpy
arrays as an ext type, only numeric and bool dtypes, bounded nesting, no pickle). Transitions travel as
one such map per frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from robot_servers import wire

SCHEMA_VERSION = 1

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
# Fields a peer may leave out (older peers do not send them); checked only when present.
OPTIONAL_FIELDS: dict[str, dict[str, type]] = {
    "hello": {"config_digests": dict},  # config field name -> digest, to name the fields that differ
    # "actor_id_in_use": another live session holds the actor id; retry_s: how long the learner waits before it
    # calls a silent session dead (an actor restarted after a kill gets in once its old session is that silent)
    "reject": {"code": str, "retry_s": float},
}
MAX_ITEMS_PER_BATCH = 100_000
MAX_CONFIG_DIGESTS = 512


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


def encode_message(msg_type: str, **fields: Any) -> bytes:
    """Encode a protocol message of ``msg_type`` with the current schema version.

    Raises ValueError naming the field (``msg_type[...]``) when a field cannot travel.
    """
    return wire.packb({"schema_version": SCHEMA_VERSION, "type": msg_type, **fields}, what=msg_type)


def unpackb(data: bytes | memoryview, what: str = "message") -> Any:
    """Decode wire bytes; anything malformed raises ProtocolError (never another exception)."""
    try:
        return wire.unpackb(data, what=what)
    except wire.WireFormatError as e:
        raise ProtocolError(str(e)) from None


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
    for name, kind in OPTIONAL_FIELDS.get(msg_type, {}).items():
        if name in msg and not isinstance(msg[name], kind):
            raise ProtocolError(f"{msg_type} field {name!r} must be {kind.__name__}, got {type(msg[name]).__name__}")
    digests = msg.get("config_digests") if msg_type == "hello" else None
    if digests is not None and (
        len(digests) > MAX_CONFIG_DIGESTS
        or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 128
                   for k, v in digests.items())
    ):
        raise ProtocolError(f"hello field 'config_digests' must map at most {MAX_CONFIG_DIGESTS} short str to str")
    if msg_type == "batch" and not 0 <= msg["n_items"] <= MAX_ITEMS_PER_BATCH:
        raise ProtocolError(f"batch field 'n_items' out of range: {msg['n_items']}")
    if msg_type in ("batch", "hello") and msg.get("seq", msg.get("first_seq")) < 0:
        raise ProtocolError(f"{msg_type} sequence number is negative")
    return msg


def decode_transition(data: bytes | memoryview) -> dict:
    """Decode one transition (a str-keyed map of arrays, scalars and nested maps)."""
    item = unpackb(data, what="transition")
    if not isinstance(item, dict):
        raise ProtocolError(f"transition must be a map, got {type(item).__name__}")
    return item
