"""The learner's dedup table without sockets: verdicts, handshakes, delivery, pruning, state round trip."""

import pytest

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
