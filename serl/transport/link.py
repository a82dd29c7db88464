"""The actor's connection state machine: handshake state, request ids, heartbeats, timeouts and backoff; no I/O."""

from __future__ import annotations

import enum

WEIGHTS_REQUEST_INTERVAL_S = 1.0


class ConnectionState(enum.Enum):
    """Where the handshake with the learner stands."""

    DISCONNECTED = "disconnected"
    HELLO_SENT = "hello_sent"
    CONNECTED = "connected"


class LearnerConnection:
    """When to say hello, ping, give up on the learner and retry; callers pass the time in (not thread-safe).

    A reply is *due* from the first request sent without an answer since; if none arrives within
    ``request_timeout_s`` the link is lost and the next hello waits a backoff that doubles up to
    ``max_reconnect_backoff_s``. When nothing is due and the link was quiet for ``heartbeat_interval_s``,
    a ping is due.
    """

    def __init__(
        self, *, now: float, request_timeout_s: float, heartbeat_interval_s: float, reconnect_backoff_s: float,
        max_reconnect_backoff_s: float,
    ):
        self.request_timeout_s = request_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.max_reconnect_backoff_s = max_reconnect_backoff_s
        self.state = ConnectionState.DISCONNECTED
        self.rid = 0  # id of the last request
        self._goback_rid = 0  # go-back replies to requests before this one are stale
        self._backoff = reconnect_backoff_s
        self._next_hello = 0.0
        self._hello_deadline = 0.0
        self._reply_due_since: float | None = None
        self._ping_outstanding = False
        self._last_rx = self._last_tx = self._away_since = now
        self._pause_until = 0.0
        self._last_weights_request = -1e9

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED

    def next_rid(self) -> int:
        """A fresh request id."""
        self.rid += 1
        return self.rid

    # ------------------------------------------------------------ traffic

    def on_send(self, now: float, delivered: bool, expects_reply: bool = True) -> None:
        """A request was handed to the socket (``delivered``) or refused for lack of a connection."""
        if delivered:
            self._last_tx = now
        if expects_reply and self._reply_due_since is None:
            self._reply_due_since = now  # a refused send waits for the learner just the same

    def on_receive(self, now: float) -> None:
        self._last_rx = now

    def settle(self, now: float, batches_unacked: bool) -> None:
        """After a reply: a reply is still due only while a ping or a sent batch is unanswered."""
        waiting = self._ping_outstanding or batches_unacked
        self._reply_due_since = (self._reply_due_since or now) if waiting else None

    def reply_overdue(self, now: float) -> bool:
        """A reply has been due for longer than ``request_timeout_s`` (counting from the last one heard)."""
        due = self._reply_due_since
        return due is not None and now - max(self._last_rx, due) > self.request_timeout_s

    def ping_due(self, now: float) -> bool:
        """Nothing is due and the link was quiet for longer than the heartbeat interval."""
        return self._reply_due_since is None and now - max(self._last_rx, self._last_tx) > self.heartbeat_interval_s

    def on_ping_sent(self) -> None:
        self._ping_outstanding = True

    def on_pong(self) -> None:
        self._ping_outstanding = False

    # ------------------------------------------------------------ handshake

    def hello_due(self, now: float) -> bool:
        return self.state is ConnectionState.DISCONNECTED and now >= self._next_hello

    def hello_overdue(self, now: float) -> bool:
        return self.state is ConnectionState.HELLO_SENT and now > self._hello_deadline

    def on_hello_sent(self, now: float) -> None:
        self.state = ConnectionState.HELLO_SENT
        self._hello_deadline = now + self.request_timeout_s

    def on_hello_refused(self, now: float) -> None:
        """No connection to send the hello on yet: try again shortly."""
        self._next_hello = now + min(self._backoff, 0.01)

    def on_hello_rejected(self, now: float, retry_in: float) -> None:
        """The learner refused the hello for now (the actor id is held by a live session): hello again later."""
        self._disconnect(next_hello=now + retry_in)

    def on_welcome(self) -> None:
        """Handshake done: replies to requests sent before it cannot ask to go back."""
        self._goback_rid = self.rid + 1
        self.state = ConnectionState.CONNECTED
        self._backoff = self.reconnect_backoff_s
        self._reply_due_since = None

    def on_lost(self, now: float) -> bool:
        """The learner stopped answering: hello again after a growing backoff; True if it was connected."""
        was_connected = self.connected
        if was_connected:
            self._away_since = now
        self._disconnect(next_hello=now + self._backoff)
        self._backoff = min(2 * self._backoff, self.max_reconnect_backoff_s)
        return was_connected

    def on_handshake_required(self, now: float) -> None:
        """The learner restarted behind the same address: hello again at once."""
        self._away_since = now
        self._disconnect(next_hello=now)

    def _disconnect(self, next_hello: float) -> None:
        self.state = ConnectionState.DISCONNECTED
        self._next_hello = next_hello
        self._reply_due_since = None
        self._ping_outstanding = False

    def unreachable_for(self, now: float) -> float | None:
        """Seconds without a connection, once that is longer than ``request_timeout_s``; else None."""
        away = now - self._away_since
        return away if not self.connected and away > self.request_timeout_s else None

    # ------------------------------------------------------------ flow control

    def go_back_applies(self, rid: int) -> bool:
        """A go-back reply to request ``rid`` is current (not answered already by an earlier go-back)."""
        return rid >= self._goback_rid

    def on_go_back(self, now: float, busy: bool) -> None:
        """Everything unacked will be resent; a busy learner gets a pause of one backoff first."""
        self._goback_rid = self.rid + 1
        if busy:
            self._pause_until = now + self.reconnect_backoff_s

    def may_send_batches(self, now: float) -> bool:
        return now >= self._pause_until

    def weights_request_due(self, now: float) -> bool:
        """At most one weights request per ``WEIGHTS_REQUEST_INTERVAL_S``."""
        return now - self._last_weights_request >= WEIGHTS_REQUEST_INTERVAL_S

    def on_weights_requested(self, now: float) -> None:
        self._last_weights_request = now
