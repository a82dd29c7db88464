"""The actor's outbox without sockets: batching limits, acks of a prefix, resends, retention, duplicate acks."""

import pytest

from serl.transport.outbox import TransitionOutbox


def make_outbox(**overrides) -> TransitionOutbox:
    limits = dict(batch_size=3, max_batch_bytes=1000, flush_interval_s=0.5, max_inflight_batches=2,
                  max_buffer_bytes=10_000, retain_bytes=0)
    return TransitionOutbox(**{**limits, **overrides})


def item(i: int, size: int = 10) -> bytes:
    return i.to_bytes(2, "little") * (size // 2)


def seqs(batches) -> list[int]:
    return [b.seq for b in batches]


def send_all(outbox: TransitionOutbox) -> list[int]:
    """What the socket side does: send every batch it is offered."""
    batches = outbox.batches_to_send()
    for batch in batches:
        batch.sent = True
    return seqs(batches)


def sent_one_per_batch(count: int, **limits) -> TransitionOutbox:
    """An outbox with ``count`` one-item batches formed and as many sent as its window allows."""
    outbox = make_outbox(batch_size=1, **limits)
    for i in range(count):
        outbox.add(item(i), now=0.0)
    outbox.form_batches(now=0.0)
    send_all(outbox)
    return outbox


def test_a_batch_is_due_at_batch_size_items():
    outbox = make_outbox()
    for i in range(2):
        outbox.add(item(i), now=0.0)
    outbox.form_batches(now=0.1)
    assert outbox.batches_to_send() == [] and outbox.stats()["pending"] == 2
    outbox.add(item(2), now=0.1)
    outbox.form_batches(now=0.1)
    [batch] = outbox.batches_to_send()
    assert batch.seq == 0 and batch.items == [item(0), item(1), item(2)] and batch.nbytes == 30


def test_a_batch_is_due_when_the_oldest_item_waited_flush_interval():
    outbox = make_outbox()
    outbox.add(item(0), now=1.0)
    outbox.add(item(1), now=1.4)
    outbox.form_batches(now=1.49)
    assert outbox.batches_to_send() == []
    outbox.form_batches(now=1.5)
    assert [b.items for b in outbox.batches_to_send()] == [[item(0), item(1)]]


def test_a_batch_is_due_at_max_batch_bytes_and_never_exceeds_it_beyond_one_item():
    outbox = make_outbox(batch_size=100, max_batch_bytes=25)
    for i in range(5):
        outbox.add(item(i), now=0.0)
    outbox.form_batches(now=0.0)
    assert [len(b.items) for b in outbox.batches_to_send()] == [2, 2]
    assert outbox.stats()["pending"] == 1  # 10 bytes: not due yet
    big = make_outbox(batch_size=100, max_batch_bytes=25)
    big.add(item(0, size=40), now=0.0)
    big.form_batches(now=0.0)
    assert [b.nbytes for b in big.batches_to_send()] == [40]  # one oversized item still travels


def test_request_flush_ships_a_partial_batch_at_once():
    outbox = make_outbox()
    outbox.add(item(0), now=0.0)
    outbox.request_flush()
    outbox.form_batches(now=0.0)
    assert seqs(outbox.batches_to_send()) == [0]
    outbox.add(item(1), now=0.0)
    outbox.form_batches(now=0.0)
    assert seqs(outbox.batches_to_send()) == [0]  # the flush request was used up


def test_in_flight_batches_are_bounded_and_numbered_in_order():
    outbox = make_outbox(batch_size=1)
    for i in range(5):
        outbox.add(item(i), now=0.0)
    outbox.form_batches(now=0.0)
    assert send_all(outbox) == [0, 1]
    assert outbox.stats()["pending"] == 3 and outbox.stats()["inflight_batches"] == 2
    assert outbox.batches_to_send() == [] and outbox.awaiting_ack


def test_an_ack_covers_a_prefix_and_frees_the_window():
    outbox = sent_one_per_batch(4)
    assert outbox.apply_ack(0)
    assert outbox.acked_seq == 0 and outbox.stats()["acked"] == 1
    outbox.form_batches(now=0.0)
    assert send_all(outbox) == [2]
    assert outbox.apply_ack(2)
    assert outbox.stats()["acked"] == 3 and outbox.stats()["inflight_batches"] == 0
    assert not outbox.awaiting_ack and not outbox.all_acked  # item 3 is still pending
    outbox.form_batches(now=0.0)
    send_all(outbox)
    outbox.apply_ack(3)
    assert outbox.all_acked and outbox.stats()["unacked_bytes"] == 0


def test_a_duplicate_or_older_ack_changes_nothing():
    outbox = sent_one_per_batch(3)
    assert outbox.apply_ack(1)
    before = outbox.stats()
    assert not outbox.apply_ack(1)
    assert not outbox.apply_ack(0)
    assert outbox.stats() == before and outbox.acked_seq == 1


def test_unacked_batches_are_resent_in_order_after_a_reconnect():
    outbox = make_outbox(batch_size=1, max_inflight_batches=3)
    for i in range(3):
        outbox.add(item(i), now=0.0)
    outbox.form_batches(now=0.0)
    assert send_all(outbox) == [0, 1, 2]
    assert outbox.first_held_seq() == 0
    outbox.resume(acked=0)  # the new connection's handshake: the learner has batch 0
    assert outbox.stats()["acked"] == 1
    assert send_all(outbox) == [1, 2]
    outbox.mark_all_unsent()  # the learner asked to go back
    assert send_all(outbox) == [1, 2]


def test_retained_batches_go_back_in_flight_for_a_learner_restored_from_an_older_checkpoint():
    outbox = sent_one_per_batch(4, max_inflight_batches=4, retain_bytes=1000)
    outbox.apply_ack(3)
    assert outbox.all_acked and outbox.first_held_seq() == 0  # retained, still offered at hello
    outbox.resume(acked=1)
    assert outbox.acked_seq == 1 and outbox.stats()["acked"] == 2
    assert outbox.stats()["resent_after_learner_restart"] == 2
    assert send_all(outbox) == [2, 3]
    assert outbox.batches_to_send() == []


def test_retention_is_bounded_by_retain_bytes_oldest_first():
    outbox = sent_one_per_batch(5, max_inflight_batches=5, retain_bytes=25)
    outbox.apply_ack(4)
    assert outbox.first_held_seq() == 3  # two 10-byte batches fit in 25 bytes
    outbox.resume(acked=0)  # batches 1 and 2 are gone for good: only 3 and 4 can come back
    assert send_all(outbox) == [3, 4]


def test_without_retention_acked_batches_are_forgotten():
    outbox = make_outbox(batch_size=1, retain_bytes=0)
    outbox.add(item(0), now=0.0)
    outbox.form_batches(now=0.0)
    send_all(outbox)
    outbox.apply_ack(0)
    assert outbox.first_held_seq() == 1
    outbox.resume(acked=-1)
    assert outbox.batches_to_send() == [] and outbox.acked_seq == 0


def test_a_full_buffer_drops_the_oldest_pending_transitions():
    outbox = make_outbox(batch_size=1, max_inflight_batches=1, max_buffer_bytes=35)
    outbox.add(item(0), now=0.0)
    outbox.form_batches(now=0.0)  # item 0 is in flight: never dropped
    assert [outbox.add(item(i), now=0.0) for i in (1, 2, 3)] == [0, 0, 1]
    stats = outbox.stats()
    assert stats["dropped"] == 1 and stats["sent"] == 4 and stats["pending"] == 2 and stats["unacked_bytes"] == 30
    outbox.apply_ack(0)
    outbox.form_batches(now=0.0)
    assert [b.items for b in outbox.batches_to_send()] == [[item(2)]]


@pytest.mark.parametrize("acked", [-1, 5])
def test_first_held_seq_without_batches_is_the_next_seq(acked):
    outbox = make_outbox()
    outbox.apply_ack(acked)
    assert outbox.first_held_seq() == 0 and outbox.held_transitions() == 0
