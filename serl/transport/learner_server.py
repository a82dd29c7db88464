"""Learner side of the transport: a ROUTER socket for actor requests and a PUB socket for weights."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from robot_servers.wire import check_encodable
from serl.transport.schema import (
    SCHEMA_VERSION,
    ProtocolError,
    SchemaMismatch,
    decode_message,
    decode_transition,
    encode_message,
    short_hash,
)
from serl.transport.security import LearnerKeys, check_bind
from serl.transport.sessions import ActorSession, BatchVerdict, SessionTable

log = logging.getLogger("serl.transport")

_REQUESTS = frozenset({"hello", "batch", "ping", "get_weights"})


@dataclasses.dataclass(frozen=True)
class LearnerServerConfig:
    """Where the learner listens, whom it accepts and how much it holds; port 0 picks a free port.

    ``keys``: folder with the learner's CURVE key pair and ``authorized/`` actor keys (``serl keys``); needed to
    listen beyond loopback unless ``insecure``. ``config_digests``: per config field digests, so that a refusal
    names the fields that differ. ``actor_timeout_s``: an actor session heard from within this long is live; a hello
    under its actor id from another session is refused until it has been silent that long.
    """

    host: str = "127.0.0.1"
    request_port: int = 5588
    weights_port: int = 5589
    config_hash: str = ""
    config_digests: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keys: Path | None = None
    insecure: bool = False
    max_frame_bytes: int = 32 * 2**20  # one transition per frame: room for several full-resolution cameras
    max_queued_bytes: int = 1 << 30
    max_sessions_per_actor: int = 8
    max_sessions: int = 2048
    actor_timeout_s: float = 5.0
    poll_interval_s: float = 0.02

    def __post_init__(self):
        for name in ("request_port", "weights_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"LearnerServerConfig.{name} must be in 0..65535, got {getattr(self, name)}")
        for name in ("max_frame_bytes", "max_queued_bytes", "max_sessions_per_actor", "max_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"LearnerServerConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("actor_timeout_s", "poll_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LearnerServerConfig.{name} must be > 0, got {getattr(self, name)}")


class BatchRefused(ValueError):
    """Raised by an ``on_batch`` callback for a batch it will never take; the actor is told why and moves on."""


@dataclasses.dataclass(frozen=True)
class ReceivedBatch:
    """Transitions of one batch from one actor session, handed to the consumer in sequence order."""

    actor_id: str
    session: str
    seq: int
    transitions: list[dict]


class LearnerServer:
    """Receives transition batches from many actors and broadcasts weights.

    Use ``drain()`` to take received batches (queue mode), or pass ``on_batch`` to have them handed to a
    callback on the server thread. Either way batches of one actor session arrive exactly once and in order.
    ``state_dict()`` reflects exactly the batches handed out so far; store it in the same checkpoint as the
    replay buffer, taken in the thread that inserts into that buffer, so that a restart deduplicates resends.
    """

    def __init__(self, config: LearnerServerConfig, on_batch: Callable[[ReceivedBatch], None] | None = None):
        self.config = config
        self.learner_id = uuid.uuid4().hex
        self._callback = on_batch
        check_bind(config.host, config.keys, config.insecure)
        keys = None if config.keys is None else LearnerKeys.load(config.keys)
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.PUB)
        for sock in (self._router, self._pub):
            sock.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes)
        self._router.setsockopt(zmq.RCVHWM, 1000)
        self._pub.setsockopt(zmq.SNDHWM, 2)
        self._auth = None
        try:
            if keys is not None:
                self._auth = keys.secure(self._ctx, [self._router, self._pub])
            self.request_port = self._bind(self._router, config.request_port)
            self.weights_port = self._bind(self._pub, config.weights_port)
        except Exception:
            self._close_sockets()
            raise
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._sessions = SessionTable(config.max_sessions_per_actor, config.max_sessions)
        self._queue: collections.deque[tuple[ReceivedBatch, int]] = collections.deque()
        self._queued_bytes = 0
        self._pub_lock = threading.Lock()
        self._weights: tuple[int, bytes] | None = None
        self._stats = collections.Counter()
        self._last_warning: dict[str, float] = {}
        self._request_handlers = {
            "hello": self._on_hello, "batch": self._on_batch, "ping": self._on_ping,
            "get_weights": self._on_get_weights,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _bind(self, sock: zmq.Socket, port: int) -> int:
        sock.bind(f"tcp://{self.config.host}:{port or '*'}")
        return int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])

    # ------------------------------------------------------------ public API

    def start(self) -> LearnerServer:
        """Start serving actor requests on a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="serl-learner-transport", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> LearnerServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server thread and close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._pub_lock:
            self._close_sockets()

    def _close_sockets(self) -> None:
        if self._auth is not None:  # before the context: the authenticator's socket lives in it
            self._auth.stop()
            self._auth = None
        self._ctx.destroy(linger=0)

    def drain(self, max_batches: int | None = None, timeout: float = 0.0) -> list[ReceivedBatch]:
        """Take received batches in arrival order; waits up to ``timeout`` s for the first one."""
        deadline = time.monotonic() + timeout
        out: list[ReceivedBatch] = []
        with self._ready:
            while not self._queue and timeout > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._ready.wait(remaining):
                    break
            while self._queue and (max_batches is None or len(out) < max_batches):
                batch, nbytes = self._queue.popleft()
                self._queued_bytes -= nbytes
                self._sessions.drained((batch.actor_id, batch.session), batch.seq)
                out.append(batch)
        return out

    def publish_weights(self, params: Any, version: int) -> None:
        """Broadcast ``params`` (a pytree of arrays, or bytes) as ``version``; actors keep the newest."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"weights version must be a non-negative int, got {version!r}")
        if isinstance(params, (bytearray, memoryview)):
            params = bytes(params)
        check_encodable(params, "params")
        message = encode_message("weights", learner_id=self.learner_id, version=version, params=params)
        with self._pub_lock:
            self._weights = (version, message)
            self._pub.send(message, copy=False)
        self._stats["weights_published"] += 1

    @property
    def weights_version(self) -> int:
        """Version of the last published weights, -1 before the first."""
        weights = self._weights
        return -1 if weights is None else weights[0]

    def state_dict(self) -> dict:
        """The dedup table (per actor session, the last batch seq handed to the consumer), JSON-able."""
        with self._lock:
            return self._sessions.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the dedup table from ``state_dict()`` output (call before actors reconnect)."""
        with self._lock:
            self._sessions.load_state_dict(state)

    def actors(self) -> dict[str, dict]:
        """Per actor id: newest session, its acked seq, seconds since last heard, and whether it is alive."""
        with self._lock:
            return self._sessions.alive(time.monotonic(), self.config.actor_timeout_s)

    def stats(self) -> dict:
        """Counters: batches/transitions accepted, duplicates, bad messages, rejections, queue size."""
        with self._lock:
            return {**self._stats, "queued_batches": len(self._queue), "queued_bytes": self._queued_bytes}

    # ------------------------------------------------------------ server thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        interval_ms = max(1, int(self.config.poll_interval_s * 1000))
        while not self._stop.is_set():
            try:
                if not poller.poll(interval_ms):
                    continue
                for _ in range(256):
                    frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    self._handle(frames)
            except zmq.Again:
                continue
            except zmq.ContextTerminated:
                return
            except Exception:  # the server thread must outlive any single bad request
                log.exception("learner transport: error while handling a request")
                self._stats["internal_errors"] += 1

    def _reply(self, identity: bytes, msg_type: str, **fields: Any) -> None:
        try:
            self._router.send_multipart([identity, encode_message(msg_type, **fields)], zmq.NOBLOCK)
        except zmq.Again:
            self._stats["replies_dropped"] += 1

    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) > 5.0:
            self._last_warning[key] = now
            log.warning(text)

    def _handle(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        if len(frames) < 2:
            self._bad(identity, -1, "message has no payload frame")
            return
        try:
            msg = decode_message(frames[1].buffer, expect=_REQUESTS)
        except SchemaMismatch as e:
            self._stats["rejected"] += 1
            rid = e.message.get("rid") if isinstance(e.message.get("rid"), int) else -1
            reason = f"schema version differs: actor {e.remote!r} vs learner {SCHEMA_VERSION}"
            self._warn("schema", f"learner transport: refused a peer: {reason}")
            if e.message.get("type") == "hello":
                self._reply(identity, "reject", rid=rid, reason=reason)
            else:
                self._reply(identity, "error", rid=rid, code="schema", reason=reason)
            return
        except ProtocolError as e:
            self._bad(identity, -1, str(e))
            return
        msg_type = msg["type"]
        expected_frames = 2 + msg["n_items"] if msg_type == "batch" else 2
        if len(frames) != expected_frames:
            self._bad(identity, msg["rid"], f"{msg_type} has {len(frames) - 1} frames, expected {expected_frames - 1}")
            return
        self._request_handlers[msg_type](identity, msg, frames)

    def _bad(self, identity: bytes, rid: int, reason: str) -> None:
        self._stats["bad_messages"] += 1
        self._warn("bad", f"learner transport: dropped a bad message: {reason}")
        self._reply(identity, "error", rid=rid, code="protocol", reason=reason)

    def _config_difference(self, msg: dict) -> str:
        """Why the actor's config hash differs: the differing fields when both sides sent digests."""
        theirs, ours = msg.get("config_digests") or {}, self.config.config_digests
        fields = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        if theirs and ours and fields:
            shown = ", ".join(fields[:20]) + (f" and {len(fields) - 20} more" if len(fields) > 20 else "")
            return f"config differs from the learner's in: {shown}"
        return (
            f"config hash differs: actor {short_hash(msg['config_hash'])} "
            f"vs learner {short_hash(self.config.config_hash)}"
        )

    def _on_hello(self, identity: bytes, msg: dict, frames) -> None:
        if msg["config_hash"] != self.config.config_hash:
            reason = self._config_difference(msg)
            self._stats["rejected"] += 1
            self._warn("hash", f"learner transport: refused actor {msg['actor_id']!r}: {reason}")
            self._reply(identity, "reject", rid=msg["rid"], reason=reason)
            return
        key = (msg["actor_id"], msg["session"])
        with self._lock:
            now = time.monotonic()
            holder = self._sessions.live_holder(key, now, self.config.actor_timeout_s)
            if holder is None:
                session, lost = self._sessions.handshake(key, msg["first_seq"], now)
                acked = session.acked
        if holder is not None:
            self._refuse_id_in_use(identity, msg, *holder)
            return
        if lost:
            log.warning(
                "learner transport: actor %r session %s no longer holds batches %d..%d (beyond its retention);"
                " they are lost",
                key[0], key[1][:8], msg["first_seq"] - lost, msg["first_seq"] - 1,
            )
            self._stats["batches_lost_beyond_retention"] += lost
        self._stats["handshakes"] += 1
        self._reply(
            identity, "welcome", rid=msg["rid"], session=key[1], acked=acked,
            learner_id=self.learner_id, weights_version=self.weights_version,
        )

    def _refuse_id_in_use(self, identity: bytes, msg: dict, holder: str, heard_s: float) -> None:
        """A second live actor under one id would mix two robots' episodes under one name: the first one keeps it."""
        actor_id = msg["actor_id"]
        reason = (f"actor id {actor_id!r} is in use by a live actor (session {holder[:8]}…, heard {heard_s:.1f} s ago); "
                  "give each actor its own --actor-id")
        self._stats["rejected_ids_in_use"] += 1
        self._warn(f"in use {actor_id}", f"learner transport: refused a second actor {actor_id!r}: {reason}")
        self._reply(identity, "reject", rid=msg["rid"], reason=reason, code="actor_id_in_use",
                    retry_s=float(self.config.actor_timeout_s))

    def _session_or_refuse(self, identity: bytes, msg: dict) -> ActorSession | None:
        """The message's handshaken session, marked as seen; None (and an error reply) without a hello."""
        session = self._sessions.handshaken((msg["actor_id"], msg["session"]), time.monotonic())
        if session is None:
            self._reply(identity, "error", rid=msg["rid"], code="handshake_required", reason="send hello first")
        return session

    def _on_batch(self, identity: bytes, msg: dict, frames) -> None:
        seq = msg["seq"]
        with self._lock:
            session = self._session_or_refuse(identity, msg)
            if session is None:
                return
            acked = session.acked
            verdict = session.verdict(seq)
            queue_full = self._callback is None and self._queued_bytes >= self.config.max_queued_bytes
        if verdict is BatchVerdict.DUPLICATE:
            status = "duplicate"
            self._stats["duplicate_batches"] += 1
        elif verdict is BatchVerdict.OUT_OF_ORDER:
            status = "out_of_order"
            self._stats["out_of_order_batches"] += 1
        elif queue_full:
            status = "busy"
            self._stats["busy"] += 1
        else:
            try:
                transitions = [decode_transition(frame.buffer) for frame in frames[2:]]
            except ProtocolError as e:
                self._bad(identity, msg["rid"], f"batch {seq} from {msg['actor_id']!r}: {e}")
                return
            batch = ReceivedBatch(msg["actor_id"], msg["session"], seq, transitions)
            status, reason = self._deliver(session, batch, sum(len(f.buffer) for f in frames[2:]))
            acked = session.acked
            if reason:
                self._reply(identity, "ack", rid=msg["rid"], session=msg["session"], seq=seq, acked=acked,
                            status=status, reason=reason)
                return
        self._reply(identity, "ack", rid=msg["rid"], session=msg["session"], seq=seq, acked=acked, status=status)

    def _deliver(self, session: ActorSession, batch: ReceivedBatch, nbytes: int) -> tuple[str, str]:
        if self._callback is not None:
            try:
                self._callback(batch)
            except BatchRefused as err:
                with self._lock:
                    self._sessions.delivered(session, batch.seq)
                self._stats["refused_batches"] += 1
                self._stats["refused_transitions"] += len(batch.transitions)
                self._warn("refused", f"learner: refused a batch from actor {batch.actor_id!r}: {err}")
                return "refused", str(err)
            except (OSError, BufferError) as err:  # a full disk, a consumer behind: the actor resends later
                self._stats["callback_errors"] += 1
                self._warn("busy", f"learner: cannot take batches now ({err}); actors will resend")
                return "busy", str(err)
            except Exception:
                log.exception("learner transport: on_batch callback failed; the actor will resend")
                self._stats["callback_errors"] += 1
                return "busy", "the learner failed to take the batch"
            with self._lock:
                self._sessions.delivered(session, batch.seq)
        else:
            with self._ready:
                self._sessions.queued(session, batch.seq)
                self._queue.append((batch, nbytes))
                self._queued_bytes += nbytes
                self._ready.notify()
        self._stats["batches"] += 1
        self._stats["transitions"] += len(batch.transitions)
        return "ok", ""

    def _on_ping(self, identity: bytes, msg: dict, frames) -> None:
        with self._lock:
            session = self._session_or_refuse(identity, msg)
            if session is None:
                return
            acked = session.acked
        self._reply(
            identity, "pong", rid=msg["rid"], session=msg["session"], acked=acked,
            learner_id=self.learner_id, weights_version=self.weights_version,
        )

    def _on_get_weights(self, identity: bytes, msg: dict, frames) -> None:
        weights = self._weights
        if weights is None:
            self._reply(identity, "error", rid=msg["rid"], code="no_weights", reason="no weights published yet")
            return
        try:
            self._router.send_multipart([identity, weights[1]], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._stats["replies_dropped"] += 1
