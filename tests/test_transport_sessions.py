"""The learner's dedup table: verdicts, handshakes, delivery, pruning, its bound in total, state round trip (all
without sockets but one test that floods a real learner with hellos)."""

import json
import time
import uuid

import numpy as np
import pytest
import zmq

from serl.transport import LearnerServer, LearnerServerConfig
from serl.transport.schema import decode_message, encode_message
from serl.transport.sessions import BatchVerdict, SessionTable

KEY = ("robot", "s1")


def test_only_the_next_seq_is_accepted():
    table = SessionTable(max_sessions_per_actor=8)
    session, lost = table.handshake(KEY, first_seq=0, now=0.0)
    assert lost == 0 and session.acked == -1
    assert session.verdict(0) is BatchVerdict.ACCEPT
    assert session.verdict(1) is BatchVerdict.OUT_OF_ORDER
    table.delivered(session, 0)
    assert session.verdict(0) is BatchVerdict.DUPLICATE
    assert session.verdict(1) is BatchVerdict.ACCEPT


def test_requests_without_a_hello_find_no_session():
    table = SessionTable(max_sessions_per_actor=8)
    assert table.handshaken(KEY, now=0.0) is None
    table.handshake(KEY, first_seq=0, now=0.0)
    assert table.handshaken(KEY, now=1.0).last_seen == 1.0


def test_queued_batches_count_as_delivered_once_drained():
    table = SessionTable(max_sessions_per_actor=8)
    session, _ = table.handshake(KEY, first_seq=0, now=0.0)
    table.queued(session, 0)
    table.queued(session, 1)
    assert session.acked == 1 and session.queued == 2
    assert table.state_dict()["sessions"] == [["robot", "s1", -1]]  # nothing handed out yet
    table.drained(KEY, 0)
    assert table.state_dict()["sessions"] == [["robot", "s1", 0]] and session.queued == 1
    table.drained(("robot", "gone"), 5)  # a pruned session: nothing to do


def test_a_hello_past_the_acked_seq_skips_batches_the_actor_no_longer_holds():
    table = SessionTable(max_sessions_per_actor=8)
    session, _ = table.handshake(KEY, first_seq=0, now=0.0)
    table.delivered(session, 2)
    session, lost = table.handshake(KEY, first_seq=6, now=1.0)
    assert lost == 3 and session.acked == 5 and session.delivered == 5
    assert session.verdict(6) is BatchVerdict.ACCEPT


def test_old_sessions_of_an_actor_are_pruned_unless_batches_are_queued():
    table = SessionTable(max_sessions_per_actor=2)
    first, _ = table.handshake(("robot", "a"), first_seq=0, now=0.0)
    table.queued(first, 0)
    table.handshake(("robot", "b"), first_seq=0, now=1.0)
    table.handshake(("robot", "c"), first_seq=0, now=2.0)
    assert [s[1] for s in table.state_dict()["sessions"]] == ["a", "b", "c"]  # "a" still has a queued batch
    table.drained(("robot", "a"), 0)
    table.handshake(("robot", "d"), first_seq=0, now=3.0)
    table.handshake(("other", "x"), first_seq=0, now=3.0)
    assert [s[:2] for s in table.state_dict()["sessions"]] == [["robot", "c"], ["robot", "d"], ["other", "x"]]


def test_alive_reports_the_newest_handshaken_session_per_actor():
    table = SessionTable(max_sessions_per_actor=8)
    table.handshake(("robot", "old"), first_seq=0, now=0.0)
    table.handshake(("robot", "new"), first_seq=0, now=4.0)
    alive = table.alive(now=10.0, timeout_s=7.0)
    assert alive == {"robot": {"session": "new", "acked": -1, "seconds_since_seen": 6.0, "alive": True}}
    assert not table.alive(now=12.0, timeout_s=7.0)["robot"]["alive"]


def test_an_actor_id_is_held_by_its_session_while_it_is_heard_from():
    table = SessionTable(max_sessions_per_actor=8)
    table.handshake(("robot", "first"), first_seq=0, now=0.0)
    table.handshaken(("robot", "first"), now=2.0)  # a batch or a ping
    assert table.live_holder(("robot", "second"), now=2.5, timeout_s=5.0) == ("first", 0.5)
    assert table.live_holder(("robot", "first"), now=2.5, timeout_s=5.0) is None  # its own reconnect
    assert table.live_holder(("arm", "second"), now=2.5, timeout_s=5.0) is None  # another id
    assert table.live_holder(("robot", "second"), now=7.0, timeout_s=5.0) is None  # silent for the timeout: dead
    table.handshake(("robot", "second"), first_seq=0, now=7.0)
    assert table.live_holder(("robot", "third"), now=8.0, timeout_s=5.0) == ("second", 1.0)  # the newest holds it


def test_sessions_restored_from_a_checkpoint_never_hold_an_actor_id():
    table = SessionTable(max_sessions_per_actor=8)
    table.load_state_dict({"format": 1, "sessions": [["robot", "before-the-restart", 7]]})
    assert table.live_holder(("robot", "new"), now=0.0, timeout_s=5.0) is None


def test_state_round_trips_and_resumes_dedup():
    table = SessionTable(max_sessions_per_actor=8)
    session, _ = table.handshake(KEY, first_seq=0, now=0.0)
    table.delivered(session, 4)
    restored = SessionTable(max_sessions_per_actor=8)
    restored.load_state_dict(table.state_dict())
    assert restored.state_dict() == table.state_dict()
    assert restored.handshaken(KEY, now=0.0) is None  # a restored session must say hello again
    session, lost = restored.handshake(KEY, first_seq=3, now=0.0)
    assert lost == 0 and session.verdict(4) is BatchVerdict.DUPLICATE


@pytest.mark.parametrize(
    "state",
    [None, {"format": 2, "sessions": []}, {"format": 1}, {"format": 1, "sessions": [["a", "b"]]},
     {"format": 1, "sessions": [["a", "b", True]]}, {"format": 1, "sessions": [["a", 1, 0]]}],
)
def test_malformed_state_is_refused_and_changes_nothing(state):
    table = SessionTable(max_sessions_per_actor=8)
    table.handshake(KEY, first_seq=0, now=0.0)
    before = table.state_dict()
    with pytest.raises(ValueError, match="transport state"):
        table.load_state_dict(state)
    assert table.state_dict() == before


def test_the_table_is_capped_in_total_evicting_the_least_recently_active_idle_sessions():
    table = SessionTable(max_sessions_per_actor=8, max_sessions=3)
    busy, _ = table.handshake(("a", "1"), first_seq=0, now=0.0)
    table.queued(busy, 0)
    table.handshake(("b", "1"), first_seq=0, now=1.0)
    table.handshake(("c", "1"), first_seq=0, now=2.0)
    table.handshaken(("b", "1"), now=3.0)  # b is now more recent than c
    table.handshake(("d", "1"), first_seq=0, now=4.0)
    assert [s[0] for s in table.state_dict()["sessions"]] == ["a", "b", "d"]  # a has a queued batch: kept
    table.drained(("a", "1"), 0)
    table.handshake(("e", "1"), first_seq=0, now=5.0)
    assert [s[0] for s in table.state_dict()["sessions"]] == ["b", "d", "e"] and len(table) == 3


def test_a_restored_table_over_the_cap_shrinks_at_the_next_hello():
    big = {"format": 1, "sessions": [[f"actor-{i}", "s", i] for i in range(10)]}
    table = SessionTable(max_sessions_per_actor=8, max_sessions=4)
    table.load_state_dict(big)
    assert len(table) == 10
    table.handshake(("new", "s"), first_seq=0, now=0.0)
    assert [s[0] for s in table.state_dict()["sessions"]] == ["actor-7", "actor-8", "actor-9", "new"]


def test_fifty_thousand_distinct_actor_ids_leave_at_most_the_cap():
    table = SessionTable(max_sessions_per_actor=8, max_sessions=2048)
    started = time.perf_counter()
    for i in range(50_000):
        table.handshake((f"actor-{i}", uuid.UUID(int=i).hex), first_seq=0, now=float(i))
    elapsed = time.perf_counter() - started
    state_bytes = len(json.dumps(table.state_dict()))
    assert len(table) == 2048 and table.state_dict()["sessions"][-1][0] == "actor-49999"
    assert state_bytes < 200_000, state_bytes
    print(f"50k hellos: {len(table)} sessions, state_dict {state_bytes} bytes as JSON, {elapsed:.2f} s")


@pytest.mark.timeout(180)
def test_fifty_thousand_hellos_over_the_socket_leave_a_small_checkpoint():
    server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0, config_hash="h")).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{server.request_port}")
    try:
        replies, chunk = 0, 1000  # a chunk at a time stays below the learner's receive high-water mark
        for start in range(0, 50_000, chunk):
            for i in range(start, start + chunk):
                sock.send(encode_message("hello", rid=i, actor_id=f"actor-{i}", session=uuid.uuid4().hex,
                                         config_hash="h", first_seq=0))
            deadline = time.monotonic() + 60
            while replies < start + chunk:
                assert sock.poll(max(1, int(1000 * (deadline - time.monotonic())))), "learner stopped replying"
                assert decode_message(sock.recv())["type"] == "welcome"
                replies += 1
        state = server.state_dict()
        state_bytes = len(json.dumps(state))
        assert len(state["sessions"]) == server.config.max_sessions and state_bytes < 200_000, state_bytes
        print(f"50k hellos over ZeroMQ: {len(state['sessions'])} sessions, state_dict {state_bytes} bytes as JSON")
    finally:
        ctx.destroy(linger=0)
        server.close()


def test_a_refused_hello_is_retried_until_the_holder_is_silent_then_the_actor_gets_in():
    from serl.transport import ActorClient, ActorClientConfig, HandshakeRejected

    server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0, config_hash="h",
                                               actor_timeout_s=1.0)).start()

    def client(**kw) -> ActorClient:
        return ActorClient(ActorClientConfig(actor_id="robot", config_hash="h", request_port=server.request_port,
                                             weights_port=server.weights_port, flush_interval_s=0.01, **kw))

    holder = client(heartbeat_interval_s=0.1)  # heard from ten times per timeout
    second = None
    try:
        assert holder.wait_connected(30)
        second = client()
        with pytest.raises(HandshakeRejected, match=r"actor id 'robot' is in use by a live actor \(session "
                                                    f"{holder.session[:8]}…"):
            second.wait_connected(60)  # the holder pings all along: refused for good after the retries
        second.close()
        assert holder.connected
        successor = second = client()
        holder.close()  # gone without a word, as after a kill
        assert successor.wait_connected(30)
        successor.send({"state": np.zeros(2, np.float32)})
        assert successor.flush(30) and server.stats()["rejected_ids_in_use"] >= 2
    finally:
        holder.close()
        if second is not None:
            second.close()
        server.close()
