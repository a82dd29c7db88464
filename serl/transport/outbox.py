"""The actor's outgoing transitions: batching, sequence numbers, acks, retention and resends; no I/O, no clock."""

from __future__ import annotations

import collections
import dataclasses
import itertools


@dataclasses.dataclass
class OutboxBatch:
    """Encoded transitions shipped together under one sequence number."""

    seq: int
    items: list[bytes]
    nbytes: int
    sent: bool = False  # sent on the current connection and not yet acked


class TransitionOutbox:
    """Encoded transitions on their way to the learner.

    A transition waits as *pending* until a batch is due (``batch_size`` items, ``max_batch_bytes``, or the
    oldest has waited ``flush_interval_s``); the batch is then *in flight* under the next sequence number
    until the learner acks it (acks cover a prefix: every seq up to ``acked``). Acked batches are *retained*
    up to ``retain_bytes`` so that a learner restored from an older checkpoint can get them again. Pending
    plus in-flight bytes are bounded by ``max_buffer_bytes``; beyond it the oldest pending transitions
    are dropped. Callers pass the time in and serialise access (not thread-safe).
    """

    def __init__(
        self, *, batch_size: int, max_batch_bytes: int, flush_interval_s: float, max_inflight_batches: int,
        max_buffer_bytes: int, retain_bytes: int,
    ):
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval_s = flush_interval_s
        self.max_inflight_batches = max_inflight_batches
        self.max_buffer_bytes = max_buffer_bytes
        self.retain_bytes = retain_bytes
        self.next_seq = 0
        self.acked_seq = -1
        self.counts: collections.Counter = collections.Counter()  # sent, acked, dropped, resent_after_learner_restart
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._flush_requested = False
        self._inflight: collections.OrderedDict[int, OutboxBatch] = collections.OrderedDict()
        self._inflight_bytes = 0
        self._retained: collections.deque[OutboxBatch] = collections.deque()
        self._retained_bytes = 0

    # ------------------------------------------------------------ queueing and batching

    def add(self, data: bytes, now: float) -> int:
        """Queue one encoded transition; returns how many of the oldest pending ones were dropped for room."""
        self.counts["sent"] += 1
        if not self._pending:
            self._pending_since = now
        self._pending.append(data)
        self._pending_bytes += len(data)
        dropped = 0
        while self._pending and self._pending_bytes + self._inflight_bytes > self.max_buffer_bytes:
            self._pending_bytes -= len(self._pending.popleft())
            dropped += 1
        self.counts["dropped"] += dropped
        return dropped

    def request_flush(self) -> None:
        """Make whatever is pending due now, without waiting for a full batch."""
        self._flush_requested = bool(self._pending)

    def form_batches(self, now: float) -> None:
        """Turn due pending transitions into numbered in-flight batches, up to ``max_inflight_batches``."""
        while self._pending and len(self._inflight) < self.max_inflight_batches and self._batch_due(now):
            items, nbytes = [], 0
            while self._pending and len(items) < self.batch_size:
                if items and nbytes + len(self._pending[0]) > self.max_batch_bytes:
                    break
                items.append(self._pending.popleft())
                nbytes += len(items[-1])
            self._pending_bytes -= nbytes
            self._pending_since = now
            self._inflight[self.next_seq] = OutboxBatch(self.next_seq, items, nbytes)
            self._inflight_bytes += nbytes
            self.next_seq += 1
        if not self._pending:
            self._flush_requested = False

    def _batch_due(self, now: float) -> bool:
        return (
            len(self._pending) >= self.batch_size
            or self._pending_bytes >= self.max_batch_bytes
            or now - self._pending_since >= self.flush_interval_s
            or self._flush_requested
        )

    def batches_to_send(self) -> list[OutboxBatch]:
        """Unsent batches inside the in-flight window, in sequence order; set ``sent`` once each has gone."""
        window = itertools.islice(self._inflight.values(), self.max_inflight_batches)
        return [batch for batch in window if not batch.sent]

    def mark_all_unsent(self) -> None:
        """Resend every in-flight batch, in order (new connection, or the learner asked to go back)."""
        for batch in self._inflight.values():
            batch.sent = False

    # ------------------------------------------------------------ acknowledgement

    def apply_ack(self, acked: int) -> bool:
        """The learner holds every batch up to ``acked``; False if that was known already."""
        if acked <= self.acked_seq:
            return False
        while self._inflight and next(iter(self._inflight)) <= acked:
            _, batch = self._inflight.popitem(last=False)
            self._inflight_bytes -= batch.nbytes
            self.counts["acked"] += len(batch.items)
            if self.retain_bytes:
                self._retained.append(batch)
                self._retained_bytes += batch.nbytes
        while self._retained and self._retained_bytes > self.retain_bytes:
            self._retained_bytes -= self._retained.popleft().nbytes
        self.acked_seq = acked
        return True

    def resume(self, acked: int) -> None:
        """After a handshake in which the learner holds batches up to ``acked``: resend everything after it."""
        if acked < self.acked_seq:
            self._rewind(acked)
        self.apply_ack(acked)
        self.mark_all_unsent()

    def _rewind(self, acked: int) -> None:
        """The learner restarted from an older checkpoint: put retained batches it no longer has back in flight."""
        back = [b for b in self._retained if b.seq > acked]
        if not back:
            return
        self._retained = collections.deque(b for b in self._retained if b.seq <= acked)
        self._retained_bytes = sum(b.nbytes for b in self._retained)
        restored = collections.OrderedDict((b.seq, b) for b in back)
        restored.update(self._inflight)
        self._inflight = restored
        self._inflight_bytes += sum(b.nbytes for b in back)
        self.counts["acked"] -= sum(len(b.items) for b in back)
        self.acked_seq = acked
        self.counts["resent_after_learner_restart"] += len(back)

    # ------------------------------------------------------------ queries

    @property
    def all_acked(self) -> bool:
        """Nothing pending and every batch formed so far acked."""
        return not self._pending and self.acked_seq >= self.next_seq - 1

    @property
    def awaiting_ack(self) -> bool:
        """A batch went out on the current connection and its ack is still due."""
        return any(batch.sent for batch in self._inflight.values())

    def first_held_seq(self) -> int:
        """Lowest sequence number still held (in flight or retained); the handshake tells the learner."""
        held = [b.seq for b in self._retained] + list(self._inflight)
        return min(held) if held else self.next_seq

    def held_transitions(self) -> int:
        """Transitions not yet acked: pending plus in flight."""
        return len(self._pending) + sum(len(b.items) for b in self._inflight.values())

    def stats(self) -> dict:
        """Counters plus the current pending / in-flight sizes."""
        return {
            "sent": self.counts["sent"],
            "acked": self.counts["acked"],
            "dropped": self.counts["dropped"],
            "pending": len(self._pending),
            "inflight_batches": len(self._inflight),
            "unacked_bytes": self._pending_bytes + self._inflight_bytes,
            "resent_after_learner_restart": self.counts["resent_after_learner_restart"],
        }
