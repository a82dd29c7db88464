"""Actor side of the transport: non-blocking transition streaming with acks, resends and weight updates."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import zmq

from serl.transport.schema import (
    ProtocolError,
    SchemaMismatch,
    check_tree,
    decode_message,
    encode_message,
    packb,
)

log = logging.getLogger("serl.transport")

_REPLIES = frozenset({"welcome", "reject", "ack", "pong", "error", "weights"})
_DISCONNECTED, _HELLO_SENT, _CONNECTED = "disconnected", "hello_sent", "connected"


class TransportError(RuntimeError):
    """The transport cannot go on (for example the learner refused this actor)."""


class HandshakeRejected(TransportError):
    """The learner refused the handshake; the message names the difference (config hash, schema version)."""


@dataclasses.dataclass(frozen=True)
class ActorConfig:
    """Where the learner is, how transitions are batched, and how long to wait before calling it lost."""

    actor_id: str = "actor-0"
    config_hash: str = ""
    host: str = "127.0.0.1"
    request_port: int = 5588
    weights_port: int = 5589
    batch_size: int = 64  # ship a batch at this many transitions ...
    max_batch_bytes: int = 32 * 2**20  # ... or this many bytes ...
    flush_interval_s: float = 0.05  # ... or when the oldest waiting transition is this old
    max_inflight_batches: int = 4
    request_timeout_s: float = 3.0  # learner silent this long while a reply is due: reconnect
    heartbeat_interval_s: float = 1.0
    reconnect_backoff_s: float = 0.1
    max_reconnect_backoff_s: float = 2.0
    max_buffer_bytes: int = 1 << 30  # unacked transitions held while the learner is away; oldest dropped beyond
    retain_bytes: int = 256 * 2**20  # acked batches kept to resend to a learner restarted from an older checkpoint
    max_weights_bytes: int = 1 << 30
    poll_interval_s: float = 0.002

    def __post_init__(self):
        if not isinstance(self.actor_id, str) or not self.actor_id:
            raise ValueError("ActorConfig.actor_id must be a non-empty str")
        for name in ("request_port", "weights_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"ActorConfig.{name} must be in 1..65535, got {getattr(self, name)}")
        for name in ("batch_size", "max_batch_bytes", "max_inflight_batches", "max_buffer_bytes", "max_weights_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ActorConfig.{name} must be positive, got {getattr(self, name)}")
        if self.retain_bytes < 0:
            raise ValueError(f"ActorConfig.retain_bytes must be >= 0, got {self.retain_bytes}")
        for name in (
            "flush_interval_s", "request_timeout_s", "heartbeat_interval_s",
            "reconnect_backoff_s", "max_reconnect_backoff_s", "poll_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ActorConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclasses.dataclass
class _Batch:
    seq: int
    items: list[bytes]
    nbytes: int
    sent: bool = False
    sent_rid: int = -1


class ActorClient:
    """Streams transitions to a ``LearnerServer`` and receives its weights; never blocks the control loop.

    ``send()`` encodes and queues a transition; a background thread batches, sends, resends after reconnects
    and applies acks, so every transition that was acked reaches the learner exactly once. ``latest_weights()``
    returns the newest weights received so far. A new client is a new session: transitions queued by a killed
    client and never acked are lost by definition.
    """

    def __init__(self, config: ActorConfig):
        self.config = config
        self.session = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._inflight: collections.OrderedDict[int, _Batch] = collections.OrderedDict()
        self._inflight_bytes = 0
        self._retained: collections.deque[_Batch] = collections.deque()
        self._retained_bytes = 0
        self._next_seq = 0
        self._acked_seq = -1
        self._flush_requested = False
        self._counts = collections.Counter()
        self._weights: tuple[str, int, Any] | None = None
        self._fatal: TransportError | None = None
        self._connected = threading.Event()
        self._last_warning: dict[str, float] = {}
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name=f"serl-actor-transport-{config.actor_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public API

    def send(self, transition: Mapping[str, Any]) -> None:
        """Queue one transition (a dict of arrays/scalars/nested dicts); returns at once.

        The transition is encoded here, so the caller may reuse its arrays afterwards. Raises ValueError
        naming the field if something in it cannot travel, and TransportError if the transport has failed.
        """
        self._raise_if_failed()
        if not isinstance(transition, Mapping):
            raise ValueError(f"transition must be a dict, got {type(transition).__name__}")
        data = packb(transition, what="transition")
        cfg = self.config
        if len(data) > cfg.max_buffer_bytes:
            raise ValueError(f"transition is {len(data)} bytes, more than max_buffer_bytes={cfg.max_buffer_bytes}")
        with self._lock:
            if self._stop.is_set():
                raise TransportError("ActorClient is closed")
            self._counts["sent"] += 1
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(data)
            self._pending_bytes += len(data)
            dropped = 0
            while self._pending and self._pending_bytes + self._inflight_bytes > cfg.max_buffer_bytes:
                self._pending_bytes -= len(self._pending.popleft())
                dropped += 1
            if dropped:
                self._counts["dropped"] += dropped
                self._warn(
                    "full",
                    f"actor transport: buffer full ({cfg.max_buffer_bytes} bytes unacked; learner away?): "
                    f"dropped the oldest unsent transitions, {self._counts['dropped']} so far",
                )

    def latest_weights(self) -> tuple[int, Any] | None:
        """``(version, params)`` of the newest weights received, or None; never blocks.

        ``params`` is a nested dict of read-only numpy arrays (or bytes, if the learner published bytes).
        """
        self._raise_if_failed()
        weights = self._weights
        return None if weights is None else (weights[1], weights[2])

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the handshake succeeded; raises HandshakeRejected if the learner refused it."""
        deadline = time.monotonic() + timeout
        while not self._connected.is_set() and self._fatal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._connected.wait(min(remaining, 0.05))
        self._raise_if_failed()
        return self._connected.is_set()

    def flush(self, timeout: float) -> bool:
        """Ship everything queued now and wait until the learner acked it all; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._fatal is None and (self._pending or self._acked_seq < self._next_seq - 1):
                self._flush_requested = bool(self._pending)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        self._raise_if_failed()
        return True

    @property
    def connected(self) -> bool:
        """True while a handshake with a live learner holds."""
        return self._connected.is_set()

    def stats(self) -> dict:
        """Counters: sent, acked, dropped, pending/in-flight transitions, reconnects, weights version."""
        with self._lock:
            weights = self._weights
            return {
                "session": self.session,
                "sent": self._counts["sent"],
                "acked": self._counts["acked"],
                "dropped": self._counts["dropped"],
                "pending": len(self._pending),
                "inflight_batches": len(self._inflight),
                "unacked_bytes": self._pending_bytes + self._inflight_bytes,
                "reconnects": self._counts["reconnects"],
                "resent_after_learner_restart": self._counts["resent_after_learner_restart"],
                "weights_version": -1 if weights is None else weights[1],
                "connected": self._connected.is_set(),
            }

    def close(self, flush_timeout: float = 0.0) -> None:
        """Optionally flush for up to ``flush_timeout`` s, then stop; unacked transitions are dropped."""
        if flush_timeout > 0 and self._fatal is None and not self._stop.is_set():
            self.flush(flush_timeout)
        self._stop.set()
        self._thread.join(timeout=5)
        self._ctx.destroy(linger=0)

    def __enter__(self) -> ActorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _warn(self, key: str, text: str, every_s: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) > every_s:
            self._last_warning[key] = now
            log.warning(text)

    # ------------------------------------------------------------ background thread

    def _run(self) -> None:
        try:
            self._loop()
        except zmq.ContextTerminated:
            pass
        except Exception as e:  # surface the failure to the caller instead of dying silently
            log.exception("actor transport thread failed")
            self._fail(TransportError(f"transport thread failed: {e!r}"))

    def _fail(self, error: TransportError) -> None:
        with self._changed:
            self._fatal = error
            self._changed.notify_all()
        self._connected.clear()
        self._stop.set()

    def _new_dealer(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing into a dead connection: resends are our job
        sock.setsockopt(zmq.SNDHWM, 2 * self.config.max_inflight_batches + 8)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_weights_bytes)
        sock.connect(f"tcp://{self.config.host}:{self.config.request_port}")
        return sock

    def _loop(self) -> None:
        cfg = self.config
        self._rid = 0
        self._goback_rid = 0
        self._dealer = self._new_dealer()
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.CONFLATE, 1)  # keep only the newest weights
        sub.setsockopt(zmq.MAXMSGSIZE, cfg.max_weights_bytes)
        heartbeat_ms = int(cfg.heartbeat_interval_s * 1000)
        sub.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(cfg.request_timeout_s * 1000))
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://{cfg.host}:{cfg.weights_port}")
        self._state = _DISCONNECTED
        self._next_hello = 0.0
        self._hello_deadline = 0.0
        self._backoff = cfg.reconnect_backoff_s
        self._awaiting_since: float | None = None
        self._ping_outstanding = False
        self._last_rx = self._last_tx = self._away_since = time.monotonic()
        self._pause_until = 0.0
        self._last_weights_request = -1e9
        poll_ms = max(1, int(cfg.poll_interval_s * 1000))
        while not self._stop.is_set():
            now = time.monotonic()
            if self._state == _DISCONNECTED and now >= self._next_hello:
                self._send_hello(now)
            elif self._state == _HELLO_SENT and now > self._hello_deadline:
                self._lose("no answer to the handshake", now)
            elif self._state == _CONNECTED:
                self._pump(now)
            if self._state != _CONNECTED and now - self._away_since > cfg.request_timeout_s:
                with self._lock:
                    pending = len(self._pending) + sum(len(b.items) for b in self._inflight.values())
                self._warn(
                    "away",
                    f"actor transport: learner at {cfg.host}:{cfg.request_port} unreachable for "
                    f"{now - self._away_since:.1f} s; {pending} transitions held, retrying",
                )
            events = dict(self._poller(sub).poll(poll_ms))
            if events.get(self._dealer):
                self._drain_dealer()
            if events.get(sub):
                self._drain_sub(sub)

    def _poller(self, sub: zmq.Socket) -> zmq.Poller:
        if getattr(self, "_poller_for", None) is not self._dealer:
            self._poller_obj = zmq.Poller()
            self._poller_obj.register(self._dealer, zmq.POLLIN)
            self._poller_obj.register(sub, zmq.POLLIN)
            self._poller_for = self._dealer
        return self._poller_obj

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _send(self, frames: list, now: float, expects_reply: bool = True) -> bool:
        try:
            self._dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
            sent = True
            self._last_tx = now
        except zmq.Again:  # no live connection (IMMEDIATE) or a full pipe: counts as waiting for the learner
            sent = False
        if expects_reply and self._awaiting_since is None:
            self._awaiting_since = now
        return sent

    def _send_hello(self, now: float) -> None:
        with self._lock:
            held = [b.seq for b in self._retained] + list(self._inflight)
            first_seq = min(held) if held else self._next_seq
        message = encode_message(
            "hello", rid=self._next_rid(), actor_id=self.config.actor_id, session=self.session,
            config_hash=self.config.config_hash, first_seq=first_seq,
        )
        if self._send([message], now):
            self._state = _HELLO_SENT
            self._hello_deadline = now + self.config.request_timeout_s
        else:  # no connection yet: try again shortly
            self._next_hello = now + min(self._backoff, 0.01)

    def _lose(self, why: str, now: float) -> None:
        """The learner stopped answering: new socket, re-handshake after a backoff; keep everything unacked."""
        if self._state == _CONNECTED:
            self._away_since = now
            self._warn("lost", f"actor transport: lost the learner ({why}); queueing and reconnecting")
            self._counts["reconnects"] += 1
        self._connected.clear()
        self._dealer.close(linger=0)
        self._dealer = self._new_dealer()
        self._state = _DISCONNECTED
        self._next_hello = now + self._backoff
        self._backoff = min(2 * self._backoff, self.config.max_reconnect_backoff_s)
        self._awaiting_since = None
        self._ping_outstanding = False
        with self._lock:
            for batch in self._inflight.values():
                batch.sent = False

    def _pump(self, now: float) -> None:
        cfg = self.config
        self._form_batches(now)
        if now >= self._pause_until:
            for position, batch in enumerate(list(self._inflight.values())):
                if position >= cfg.max_inflight_batches:
                    break
                if not batch.sent:
                    rid = self._next_rid()
                    header = encode_message(
                        "batch", rid=rid, actor_id=cfg.actor_id, session=self.session,
                        seq=batch.seq, n_items=len(batch.items),
                    )
                    if not self._send([header, *batch.items], now):
                        break
                    batch.sent, batch.sent_rid = True, rid
        if self._awaiting_since is not None:
            if now - max(self._last_rx, self._awaiting_since) > cfg.request_timeout_s:
                self._lose(f"no reply for {cfg.request_timeout_s} s", now)
        elif now - max(self._last_rx, self._last_tx) > cfg.heartbeat_interval_s:
            ping = encode_message("ping", rid=self._next_rid(), actor_id=cfg.actor_id, session=self.session)
            if self._send([ping], now):
                self._ping_outstanding = True

    def _form_batches(self, now: float) -> None:
        cfg = self.config
        with self._lock:
            while self._pending and len(self._inflight) < cfg.max_inflight_batches:
                due = (
                    len(self._pending) >= cfg.batch_size
                    or self._pending_bytes >= cfg.max_batch_bytes
                    or now - self._pending_since >= cfg.flush_interval_s
                    or self._flush_requested
                )
                if not due:
                    break
                items, nbytes = [], 0
                while self._pending and len(items) < cfg.batch_size:
                    if items and nbytes + len(self._pending[0]) > cfg.max_batch_bytes:
                        break
                    items.append(self._pending.popleft())
                    nbytes += len(items[-1])
                self._pending_bytes -= nbytes
                self._pending_since = now
                self._inflight[self._next_seq] = _Batch(self._next_seq, items, nbytes)
                self._inflight_bytes += nbytes
                self._next_seq += 1
            if not self._pending:
                self._flush_requested = False

    def _apply_acked(self, acked: int) -> None:
        with self._changed:
            if acked <= self._acked_seq:
                return
            while self._inflight and next(iter(self._inflight)) <= acked:
                _, batch = self._inflight.popitem(last=False)
                self._inflight_bytes -= batch.nbytes
                self._counts["acked"] += len(batch.items)
                if self.config.retain_bytes:
                    self._retained.append(batch)
                    self._retained_bytes += batch.nbytes
            while self._retained and self._retained_bytes > self.config.retain_bytes:
                self._retained_bytes -= self._retained.popleft().nbytes
            self._acked_seq = acked
            self._changed.notify_all()

    def _rewind(self, acked: int) -> None:
        """The learner restarted from an older checkpoint: resend retained batches it no longer has."""
        with self._changed:
            back = [b for b in self._retained if b.seq > acked]
            if not back:
                return
            self._retained = collections.deque(b for b in self._retained if b.seq <= acked)
            self._retained_bytes = sum(b.nbytes for b in self._retained)
            restored = collections.OrderedDict((b.seq, b) for b in back)
            restored.update(self._inflight)
            self._inflight = restored
            self._inflight_bytes += sum(b.nbytes for b in back)
            self._counts["acked"] -= sum(len(b.items) for b in back)
            self._acked_seq = acked
            self._counts["resent_after_learner_restart"] += len(back)

    def _drain_dealer(self) -> None:
        while True:
            try:
                frames = self._dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            self._last_rx = now
            try:
                if len(frames) != 1:
                    raise ProtocolError(f"reply has {len(frames)} frames, expected 1")
                msg = decode_message(frames[0].buffer, expect=_REPLIES)
                getattr(self, f"_on_{msg['type']}")(msg, now)
            except SchemaMismatch as e:
                self._fail(HandshakeRejected(f"learner speaks another schema: {e}"))
                return
            except ProtocolError as e:
                self._warn("bad_reply", f"actor transport: ignored a bad reply from the learner: {e}")

    def _on_welcome(self, msg: dict, now: float) -> None:
        if self._state != _HELLO_SENT or msg["session"] != self.session:
            return
        if msg["acked"] < self._acked_seq:
            self._rewind(msg["acked"])
        self._apply_acked(msg["acked"])
        with self._lock:
            for batch in self._inflight.values():
                batch.sent = False
        self._goback_rid = self._rid + 1
        self._state = _CONNECTED
        self._backoff = self.config.reconnect_backoff_s
        self._awaiting_since = None
        self._connected.set()
        self._maybe_request_weights(msg["learner_id"], msg["weights_version"], now)

    def _on_reject(self, msg: dict, now: float) -> None:
        if self._state == _HELLO_SENT:
            self._fail(HandshakeRejected(f"learner refused actor {self.config.actor_id!r}: {msg['reason']}"))

    def _on_ack(self, msg: dict, now: float) -> None:
        if msg["session"] != self.session or self._state != _CONNECTED:
            return
        self._apply_acked(msg["acked"])
        if msg["status"] in ("busy", "out_of_order") and msg["rid"] >= self._goback_rid:
            # go back: resend everything unacked, in order, from the first missing batch
            with self._lock:
                for batch in self._inflight.values():
                    batch.sent = False
            self._goback_rid = self._rid + 1
            if msg["status"] == "busy":
                self._pause_until = now + self.config.reconnect_backoff_s
        self._update_awaiting(now)

    def _update_awaiting(self, now: float) -> None:
        with self._lock:
            waiting = self._ping_outstanding or any(b.sent for b in self._inflight.values())
        self._awaiting_since = (self._awaiting_since or now) if waiting else None

    def _on_pong(self, msg: dict, now: float) -> None:
        if msg["session"] != self.session or self._state != _CONNECTED:
            return
        self._ping_outstanding = False
        self._apply_acked(msg["acked"])
        self._update_awaiting(now)
        self._maybe_request_weights(msg["learner_id"], msg["weights_version"], now)

    def _on_error(self, msg: dict, now: float) -> None:
        code = msg["code"]
        if code == "handshake_required" and self._state == _CONNECTED:
            self._state = _DISCONNECTED  # the learner restarted behind the same address
            self._next_hello = now
            self._awaiting_since = None
            self._ping_outstanding = False
            self._connected.clear()
            self._away_since = now
            self._counts["reconnects"] += 1
        elif code == "schema":
            self._fail(HandshakeRejected(f"learner refused actor {self.config.actor_id!r}: {msg['reason']}"))
        elif code == "protocol":
            self._fail(TransportError(f"learner could not decode our message: {msg['reason']}"))

    def _maybe_request_weights(self, learner_id: str, version: int, now: float) -> None:
        if version < 0 or not self._is_newer(learner_id, version) or now - self._last_weights_request < 1.0:
            return
        message = encode_message("get_weights", rid=self._next_rid(), actor_id=self.config.actor_id, session=self.session)
        if self._send([message], now, expects_reply=False):
            self._last_weights_request = now

    def _is_newer(self, learner_id: str, version: int) -> bool:
        current = self._weights
        return current is None or learner_id != current[0] or version > current[1]

    def _on_weights(self, msg: dict, now: float) -> None:
        if "params" not in msg:
            raise ProtocolError("weights message lacks field 'params'")
        check_tree(msg["params"], "params")
        if self._is_newer(msg["learner_id"], msg["version"]):
            self._weights = (msg["learner_id"], msg["version"], msg["params"])
            self._counts["weights_received"] += 1

    def _drain_sub(self, sub: zmq.Socket) -> None:
        while True:
            try:
                frame = sub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = decode_message(frame.buffer, expect=frozenset({"weights"}))
                self._on_weights(msg, time.monotonic())
            except ProtocolError as e:
                self._warn("bad_weights", f"actor transport: ignored bad weights from the learner: {e}")
