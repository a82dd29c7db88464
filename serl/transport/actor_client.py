"""Actor side of the transport: non-blocking transition streaming with acks, resends and weight updates."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from robot_servers.wire import packb
from serl.transport.link import ConnectionState, LearnerConnection
from serl.transport.outbox import TransitionOutbox
from serl.transport.schema import ProtocolError, SchemaMismatch, decode_message, encode_message
from serl.transport.security import ActorKeys

log = logging.getLogger("serl.transport")

_REPLIES = frozenset({"welcome", "reject", "ack", "pong", "error", "weights"})
ID_IN_USE_MARGIN_S = 2.0
"""Beyond twice the learner's actor timeout, how long a hello refused for an actor id in use is retried."""


class TransportError(RuntimeError):
    """The transport cannot go on (for example the learner refused this actor)."""


class HandshakeRejected(TransportError, ValueError):
    """The learner refused the handshake; the message names the difference (config fields, schema version, key).

    Also a ValueError: like a bad option, it is a setup error that the ``serl`` command reports in one line.
    """


@dataclasses.dataclass(frozen=True)
class ActorClientConfig:
    """Where the learner is, how transitions are batched, and how long to wait before calling it lost."""

    actor_id: str = "actor-0"
    config_hash: str = ""
    config_digests: Mapping[str, str] = dataclasses.field(default_factory=dict)  # per config field, for refusals
    keys: Path | None = None  # CURVE key folder (actor.key_secret, learner.key) made by `serl keys`
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
            raise ValueError("ActorClientConfig.actor_id must be a non-empty str")
        for name in ("request_port", "weights_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"ActorClientConfig.{name} must be in 1..65535, got {getattr(self, name)}")
        for name in ("batch_size", "max_batch_bytes", "max_inflight_batches", "max_buffer_bytes", "max_weights_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ActorClientConfig.{name} must be positive, got {getattr(self, name)}")
        if self.retain_bytes < 0:
            raise ValueError(f"ActorClientConfig.retain_bytes must be >= 0, got {self.retain_bytes}")
        for name in (
            "flush_interval_s", "request_timeout_s", "heartbeat_interval_s",
            "reconnect_backoff_s", "max_reconnect_backoff_s", "poll_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ActorClientConfig.{name} must be > 0, got {getattr(self, name)}")


class ActorClient:
    """Streams transitions to a ``LearnerServer`` and receives its weights; never blocks the control loop.

    ``send()`` encodes and queues a transition; a background thread batches, sends, resends after reconnects
    and applies acks, so every transition that was acked reaches the learner exactly once. ``latest_weights()``
    returns the newest weights received so far. A new client is a new session: transitions queued by a killed
    client and never acked are lost by definition. While another live session holds the actor id the learner
    refuses the hello; it is retried until that session has been silent for the learner's actor timeout (twice
    that, plus ``ID_IN_USE_MARGIN_S``), so an actor restarted right after a kill gets in, and a second live actor
    under the same id fails with ``HandshakeRejected``.
    """

    def __init__(self, config: ActorClientConfig):
        self.config = config
        self.session = uuid.uuid4().hex
        self._lock = threading.Lock()  # guards the outbox, shared by the caller and the transport thread
        self._changed = threading.Condition(self._lock)
        self._outbox = TransitionOutbox(
            batch_size=config.batch_size, max_batch_bytes=config.max_batch_bytes,
            flush_interval_s=config.flush_interval_s, max_inflight_batches=config.max_inflight_batches,
            max_buffer_bytes=config.max_buffer_bytes, retain_bytes=config.retain_bytes,
        )
        self._counts = collections.Counter()  # reconnects, weights_received
        self._weights: tuple[str, int, Any] | None = None
        self._fatal: TransportError | None = None
        self._id_refused_since: float | None = None  # first refusal of the hello because the actor id was in use
        self._connected = threading.Event()
        self._last_warning: dict[str, float] = {}
        self._reply_handlers = {
            "welcome": self._on_welcome, "reject": self._on_reject, "ack": self._on_ack,
            "pong": self._on_pong, "error": self._on_error, "weights": self._on_weights,
        }
        self._link = LearnerConnection(  # touched by the transport thread only, like the sockets below
            now=time.monotonic(), request_timeout_s=config.request_timeout_s,
            heartbeat_interval_s=config.heartbeat_interval_s, reconnect_backoff_s=config.reconnect_backoff_s,
            max_reconnect_backoff_s=config.max_reconnect_backoff_s,
        )
        self._dealer: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None
        self._stop = threading.Event()
        self._keys = None if config.keys is None else ActorKeys.load(config.keys)
        self._monitor: zmq.Socket | None = None  # handshake failures of the request socket (CURVE only)
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
        limit = self.config.max_buffer_bytes
        if len(data) > limit:
            raise ValueError(f"transition is {len(data)} bytes, more than max_buffer_bytes={limit}")
        with self._lock:
            if self._stop.is_set():
                raise TransportError("ActorClient is closed")
            if self._outbox.add(data, time.monotonic()):
                self._warn(
                    "full",
                    f"actor transport: buffer full ({limit} bytes unacked; learner away?): "
                    f"dropped the oldest unsent transitions, {self._outbox.counts['dropped']} so far",
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
            while self._fatal is None and not self._outbox.all_acked:
                self._outbox.request_flush()
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
                **self._outbox.stats(),
                "reconnects": self._counts["reconnects"],
                "refused_batches": self._counts["refused_batches"],
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

    # ------------------------------------------------------------ transport thread: sockets

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

    def _loop(self) -> None:
        self._sub = self._new_sub()
        self._replace_dealer()
        poll_ms = max(1, int(self.config.poll_interval_s * 1000))
        while not self._stop.is_set():
            self._advance(time.monotonic())
            events = dict(self._poller.poll(poll_ms))
            if events.get(self._dealer):
                self._drain_dealer()
            if events.get(self._sub):
                self._drain_sub()

    def _new_sub(self) -> zmq.Socket:
        cfg = self.config
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.CONFLATE, 1)  # keep only the newest weights
        sub.setsockopt(zmq.MAXMSGSIZE, cfg.max_weights_bytes)
        sub.setsockopt(zmq.HEARTBEAT_IVL, int(cfg.heartbeat_interval_s * 1000))
        sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(cfg.request_timeout_s * 1000))
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if self._keys is not None:
            self._keys.secure(sub)
        sub.connect(f"tcp://{cfg.host}:{cfg.weights_port}")
        return sub

    def _replace_dealer(self) -> None:
        """A fresh request socket (the old one may hold requests to a dead learner), polled with the sub."""
        if self._dealer is not None:
            if self._monitor is not None:
                self._dealer.disable_monitor()
                self._monitor.close(linger=0)
            self._dealer.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing into a dead connection: resends are our job
        sock.setsockopt(zmq.SNDHWM, 2 * self.config.max_inflight_batches + 8)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_weights_bytes)
        if self._keys is not None:
            self._keys.secure(sock)
            self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        sock.connect(f"tcp://{self.config.host}:{self.config.request_port}")
        self._dealer = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._sub, zmq.POLLIN)

    def _send(self, frames: list, now: float, expects_reply: bool = True) -> bool:
        try:
            self._dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
            sent = True
        except zmq.Again:  # no live connection (IMMEDIATE) or a full pipe: counts as waiting for the learner
            sent = False
        self._link.on_send(now, sent, expects_reply)
        return sent

    def _drain_dealer(self) -> None:
        while True:
            try:
                frames = self._dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            self._link.on_receive(now)
            try:
                if len(frames) != 1:
                    raise ProtocolError(f"reply has {len(frames)} frames, expected 1")
                msg = decode_message(frames[0].buffer, expect=_REPLIES)
                self._reply_handlers[msg["type"]](msg, now)
            except SchemaMismatch as e:
                self._fail(HandshakeRejected(f"learner speaks another schema: {e}"))
                return
            except ProtocolError as e:
                self._warn("bad_reply", f"actor transport: ignored a bad reply from the learner: {e}")

    def _drain_sub(self) -> None:
        while True:
            try:
                frame = self._sub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = decode_message(frame.buffer, expect=frozenset({"weights"}))
                self._on_weights(msg, time.monotonic())
            except ProtocolError as e:
                self._warn("bad_weights", f"actor transport: ignored bad weights from the learner: {e}")

    # ------------------------------------------------------------ transport thread: protocol

    def _advance(self, now: float) -> None:
        """Handshake, ship batches, heartbeat and time out, whichever the connection state calls for."""
        link, cfg = self._link, self.config
        if link.hello_due(now):
            self._send_hello(now)
        elif link.hello_overdue(now):
            self._lose("no answer to the handshake", now)
        elif link.connected:
            self._pump(now)
        away = link.unreachable_for(now)
        if away is not None and self._id_refused_since is None:
            with self._lock:
                held = self._outbox.held_transitions()
            self._warn(
                "away",
                f"actor transport: learner at {cfg.host}:{cfg.request_port} unreachable for "
                f"{away:.1f} s; {held} transitions held, retrying",
            )

    def _send_hello(self, now: float) -> None:
        if self._key_refused():
            return
        with self._lock:
            first_seq = self._outbox.first_held_seq()
        extra = {"config_digests": dict(self.config.config_digests)} if self.config.config_digests else {}
        message = encode_message(
            "hello", rid=self._link.next_rid(), actor_id=self.config.actor_id, session=self.session,
            config_hash=self.config.config_hash, first_seq=first_seq, **extra,
        )
        if self._send([message], now):
            self._link.on_hello_sent(now)
        else:
            self._link.on_hello_refused(now)

    def _key_refused(self) -> bool:
        """The learner's authenticator turned our CURVE key down (seen on the monitor): fail with that."""
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return False
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._fail(HandshakeRejected(
                    f"learner at {self.config.host}:{self.config.request_port} refused actor "
                    f"{self.config.actor_id!r}'s key (status {event['value']}): copy {self.config.keys}/actor.key "
                    "into the learner's authorized/ folder (serl keys does) and restart the learner"
                ))
                return True
        return False

    def _lose(self, why: str, now: float) -> None:
        """The learner stopped answering: new socket, re-handshake after a backoff; keep everything unacked."""
        if self._link.on_lost(now):
            self._warn("lost", f"actor transport: lost the learner ({why}); queueing and reconnecting")
            self._counts["reconnects"] += 1
        self._connected.clear()
        self._replace_dealer()
        with self._lock:
            self._outbox.mark_all_unsent()

    def _pump(self, now: float) -> None:
        link, cfg = self._link, self.config
        with self._lock:
            self._outbox.form_batches(now)
            batches = self._outbox.batches_to_send() if link.may_send_batches(now) else []
        for batch in batches:
            header = encode_message(
                "batch", rid=link.next_rid(), actor_id=cfg.actor_id, session=self.session,
                seq=batch.seq, n_items=len(batch.items),
            )
            if not self._send([header, *batch.items], now):
                break
            batch.sent = True
        if link.reply_overdue(now):
            self._lose(f"no reply for {cfg.request_timeout_s} s", now)
        elif link.ping_due(now):
            ping = encode_message("ping", rid=link.next_rid(), actor_id=cfg.actor_id, session=self.session)
            if self._send([ping], now):
                link.on_ping_sent()

    def _apply_acked(self, acked: int) -> None:
        with self._changed:
            if self._outbox.apply_ack(acked):
                self._changed.notify_all()

    def _settle(self, now: float) -> None:
        with self._lock:
            batches_unacked = self._outbox.awaiting_ack
        self._link.settle(now, batches_unacked)

    def _on_welcome(self, msg: dict, now: float) -> None:
        if self._link.state is not ConnectionState.HELLO_SENT or msg["session"] != self.session:
            return
        with self._changed:
            self._outbox.resume(msg["acked"])
            self._changed.notify_all()
        self._link.on_welcome()
        self._id_refused_since = None
        self._connected.set()
        self._maybe_request_weights(msg["learner_id"], msg["weights_version"], now)

    def _on_reject(self, msg: dict, now: float) -> None:
        if self._link.state is not ConnectionState.HELLO_SENT:
            return
        reason = f"learner refused actor {self.config.actor_id!r}: {msg['reason']}"
        retry_s = msg.get("retry_s") if msg.get("code") == "actor_id_in_use" else None
        if retry_s is not None:
            if self._id_refused_since is None:
                self._id_refused_since = now
            if now - self._id_refused_since < 2 * retry_s + ID_IN_USE_MARGIN_S:
                self._warn("in_use", f"actor transport: {reason}; retrying until that session is "
                                     f"{retry_s:g} s silent")
                self._link.on_hello_rejected(now, retry_in=min(0.5, retry_s / 10))
                return
        self._fail(HandshakeRejected(reason))

    def _on_ack(self, msg: dict, now: float) -> None:
        link = self._link
        if msg["session"] != self.session or not link.connected:
            return
        self._apply_acked(msg["acked"])
        if msg["status"] == "refused":
            self._counts["refused_batches"] += 1
            self._warn("refused", f"the learner refused a batch ({self._counts['refused_batches']} so far) and "
                                  f"will not take it: {msg.get('reason', '')}")
        if msg["status"] in ("busy", "out_of_order") and link.go_back_applies(msg["rid"]):
            # go back: resend everything unacked, in order, from the first missing batch
            with self._lock:
                self._outbox.mark_all_unsent()
            link.on_go_back(now, busy=msg["status"] == "busy")
        self._settle(now)

    def _on_pong(self, msg: dict, now: float) -> None:
        if msg["session"] != self.session or not self._link.connected:
            return
        self._link.on_pong()
        self._apply_acked(msg["acked"])
        self._settle(now)
        self._maybe_request_weights(msg["learner_id"], msg["weights_version"], now)

    def _on_error(self, msg: dict, now: float) -> None:
        code = msg["code"]
        if code == "handshake_required" and self._link.connected:
            self._link.on_handshake_required(now)  # the learner restarted behind the same address
            self._connected.clear()
            self._counts["reconnects"] += 1
        elif code == "schema":
            self._fail(HandshakeRejected(f"learner refused actor {self.config.actor_id!r}: {msg['reason']}"))
        elif code == "protocol":
            self._fail(TransportError(f"learner could not decode our message: {msg['reason']}"))

    def _maybe_request_weights(self, learner_id: str, version: int, now: float) -> None:
        link = self._link
        if version < 0 or not self._is_newer(learner_id, version) or not link.weights_request_due(now):
            return
        message = encode_message(
            "get_weights", rid=link.next_rid(), actor_id=self.config.actor_id, session=self.session
        )
        if self._send([message], now, expects_reply=False):
            link.on_weights_requested(now)

    def _is_newer(self, learner_id: str, version: int) -> bool:
        current = self._weights
        return current is None or learner_id != current[0] or version > current[1]

    def _on_weights(self, msg: dict, now: float) -> None:
        if "params" not in msg:
            raise ProtocolError("weights message lacks field 'params'")
        if self._is_newer(msg["learner_id"], msg["version"]):
            self._weights = (msg["learner_id"], msg["version"], msg["params"])
            self._counts["weights_received"] += 1
