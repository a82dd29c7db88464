"""The actor's connection state machine without sockets: handshake, timeouts, heartbeats, backoff, go-back."""

from serl.transport.link import ConnectionState, LearnerConnection


def make_link(now: float = 0.0) -> LearnerConnection:
    return LearnerConnection(now=now, request_timeout_s=1.0, heartbeat_interval_s=0.5, reconnect_backoff_s=0.1,
                max_reconnect_backoff_s=0.4)


def connect(link: LearnerConnection, now: float) -> None:
    assert link.hello_due(now)
    link.next_rid()
    link.on_send(now, delivered=True)
    link.on_hello_sent(now)
    link.on_receive(now)
    link.on_welcome()


def test_handshake_moves_through_the_states():
    link = make_link()
    assert link.state is ConnectionState.DISCONNECTED and link.hello_due(0.0)
    link.on_send(0.0, delivered=False)
    link.on_hello_refused(0.0)
    assert not link.hello_due(0.005) and link.hello_due(0.01)
    link.on_hello_sent(0.01)
    assert link.state is ConnectionState.HELLO_SENT and not link.hello_due(0.02)
    assert not link.hello_overdue(1.01) and link.hello_overdue(1.02)
    link.on_welcome()
    assert link.connected and not link.reply_overdue(5.0)


def test_a_due_reply_times_out_counting_from_the_last_message_heard():
    link = make_link()
    connect(link, 0.0)
    link.on_send(1.0, delivered=True)  # a batch
    link.on_receive(1.8)  # something else arrived meanwhile
    assert not link.reply_overdue(2.7) and link.reply_overdue(2.9)


def test_a_ping_is_due_only_when_idle_and_settles_with_the_pong():
    link = make_link()
    connect(link, 0.0)
    assert not link.ping_due(0.4) and link.ping_due(0.6)
    link.on_send(0.6, delivered=True)
    link.on_ping_sent()
    assert not link.ping_due(2.0)
    link.on_receive(0.7)
    link.on_pong()
    link.settle(0.7, batches_unacked=False)
    assert not link.reply_overdue(5.0) and link.ping_due(1.3)
    link.on_send(1.3, delivered=True)
    link.settle(1.4, batches_unacked=True)  # an ack that leaves batches outstanding keeps the reply due
    assert link.reply_overdue(2.5)


def test_losing_the_learner_backs_off_exponentially_up_to_the_limit():
    link = make_link()
    connect(link, 0.0)
    assert link.on_lost(1.0)  # was connected: counts as a reconnect
    assert not link.hello_due(1.09) and link.hello_due(1.11)
    link.on_hello_sent(1.1)
    assert not link.on_lost(2.0)  # lost during the handshake
    assert not link.hello_due(2.19) and link.hello_due(2.21)
    link.on_lost(3.0)
    link.on_lost(3.0)
    assert not link.hello_due(3.39) and link.hello_due(3.41)  # capped at 0.4 s
    connect(link, 4.0)
    link.on_lost(4.0)
    assert not link.hello_due(4.09) and link.hello_due(4.11)  # a welcome resets the backoff


def test_unreachable_for_counts_from_the_loss():
    link = make_link()
    assert link.unreachable_for(0.5) is None and link.unreachable_for(1.5) == 1.5
    connect(link, 2.0)
    assert link.unreachable_for(10.0) is None
    link.on_handshake_required(10.0)
    assert link.hello_due(10.0) and link.unreachable_for(10.5) is None and link.unreachable_for(11.5) == 1.5


def test_go_back_applies_once_per_round_and_busy_pauses_batches():
    link = make_link()
    connect(link, 0.0)
    first, second = link.next_rid(), link.next_rid()
    assert link.go_back_applies(first)
    link.on_go_back(1.0, busy=True)
    assert not link.go_back_applies(second)  # answers a request sent before the go-back
    assert not link.may_send_batches(1.05) and link.may_send_batches(1.1)
    assert link.go_back_applies(link.next_rid())


def test_weights_requests_are_rate_limited():
    link = make_link()
    assert link.weights_request_due(0.0)
    link.on_weights_requested(0.0)
    assert not link.weights_request_due(0.99) and link.weights_request_due(1.0)


def test_a_hello_refused_for_an_actor_id_in_use_is_sent_again_after_the_given_wait():
    link = make_link()
    link.next_rid()
    link.on_send(0.0, delivered=True)
    link.on_hello_sent(0.0)
    link.on_hello_rejected(0.2, retry_in=0.5)
    assert link.state is ConnectionState.DISCONNECTED and not link.hello_overdue(5.0)
    assert not link.hello_due(0.69) and link.hello_due(0.7)
    assert not link.reply_overdue(5.0)  # no reply is due from a refused hello
