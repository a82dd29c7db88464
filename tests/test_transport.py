"""Transport integration on real sockets over 127.0.0.1: ordering, acks, dedup, handshake, bad peers, weights."""

import logging
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from robot_servers.wire import packb
from serl.transport import (
    SCHEMA_VERSION,
    ActorClient,
    ActorClientConfig,
    HandshakeRejected,
    LearnerServer,
    LearnerServerConfig,
    config_hash,
)
from serl.transport.schema import encode_message

pytestmark = pytest.mark.timeout(60)

HASH = config_hash({"task": "PandaPickCube", "seed": 0})
FAST = dict(request_timeout_s=0.5, heartbeat_interval_s=0.2, reconnect_backoff_s=0.05, max_reconnect_backoff_s=0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_learner(request_port=0, weights_port=0, **kw) -> LearnerServer:
    return LearnerServer(
        LearnerServerConfig(request_port=request_port, weights_port=weights_port, config_hash=HASH, **kw.pop("cfg", {})),
        **kw,
    ).start()


def make_actor(request_port, weights_port, actor_id="a0", **kw) -> ActorClient:
    cfg = {**FAST, "batch_size": 8, "flush_interval_s": 0.01, "config_hash": HASH, **kw}
    return ActorClient(
        ActorClientConfig(actor_id=actor_id, request_port=request_port, weights_port=weights_port, **cfg)
    )


def transition(i: int, run: int = 0) -> dict:
    return {
        "id": i,
        "run": run,
        "observations": {"state": np.full(4, i, np.float32), "wrist": np.full((8, 8, 3), i % 256, np.uint8)},
        "actions": np.zeros(7, np.float32),
        "rewards": float(i),
        "dones": False,
    }


def received_ids(batches) -> list[int]:
    return [t["id"] for b in batches for t in b.transitions]


def drain_until(server, count, timeout=10.0) -> list:
    batches, deadline = [], time.monotonic() + timeout
    while sum(len(b.transitions) for b in batches) < count and time.monotonic() < deadline:
        batches += server.drain(timeout=0.05)
    return batches


@pytest.fixture
def learner():
    server = make_learner()
    yield server
    server.close()


def test_transitions_arrive_once_in_order_with_arrays_intact(learner):
    actor = make_actor(learner.request_port, learner.weights_port)
    try:
        assert actor.wait_connected(5)
        for i in range(100):
            actor.send(transition(i))
        assert actor.flush(10)
        batches = learner.drain()
        assert received_ids(batches) == list(range(100))
        assert [b.seq for b in batches] == list(range(len(batches)))
        last = batches[-1].transitions[-1]
        np.testing.assert_array_equal(last["observations"]["wrist"], np.full((8, 8, 3), 99, np.uint8))
        assert last["observations"]["state"].dtype == np.float32 and last["rewards"] == 99.0
        assert actor.stats()["acked"] == 100
        assert learner.state_dict()["sessions"] == [["a0", actor.session, batches[-1].seq]]
    finally:
        actor.close()


def test_callback_mode_hands_batches_in_order_and_a_failing_callback_gets_a_resend():
    got, failures = [], [2]

    def on_batch(batch):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("buffer not ready")
        got.extend(t["id"] for t in batch.transitions)

    server = make_learner(on_batch=on_batch)
    actor = make_actor(server.request_port, server.weights_port)
    try:
        for i in range(40):
            actor.send(transition(i))
        assert actor.flush(10)
        assert got == list(range(40))
        assert server.stats()["callback_errors"] == 2
    finally:
        actor.close()
        server.close()


def test_send_does_not_copy_references_so_callers_may_reuse_buffers(learner):
    actor = make_actor(learner.request_port, learner.weights_port)
    try:
        buf = {"id": 0, "obs": np.zeros(3, np.float32)}
        actor.send(buf)
        buf["obs"][:] = 5
        assert actor.flush(5)
        np.testing.assert_array_equal(learner.drain()[0].transitions[0]["obs"], np.zeros(3))
    finally:
        actor.close()


def test_bad_transition_is_refused_at_send_naming_the_field(learner):
    actor = make_actor(learner.request_port, learner.weights_port)
    try:
        with pytest.raises(ValueError, match=r"transition\['observations'\]\['bad'\]"):
            actor.send({"observations": {"bad": np.array([None], dtype=object)}})
        with pytest.raises(ValueError, match="must be a dict"):
            actor.send([1, 2])
        assert actor.stats()["sent"] == 0
    finally:
        actor.close()


def test_config_hash_mismatch_is_refused_naming_both_hashes(learner):
    other = config_hash({"task": "PandaPegInsertion"})
    actor = make_actor(learner.request_port, learner.weights_port, config_hash=other)
    try:
        with pytest.raises(HandshakeRejected, match=f"config hash differs: actor {other[:12]}… vs learner {HASH[:12]}…"):
            actor.wait_connected(5)
        with pytest.raises(HandshakeRejected):
            actor.send(transition(0))
        assert learner.stats()["rejected"] == 1
    finally:
        actor.close()


def raw_dealer(ctx, port):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def reply(sock) -> dict:
    return msgpack.unpackb(sock.recv(), raw=False)


def test_schema_version_mismatch_is_refused_naming_both_versions(learner):
    ctx = zmq.Context()
    try:
        sock = raw_dealer(ctx, learner.request_port)
        hello = {"schema_version": SCHEMA_VERSION + 1, "type": "hello", "rid": 3, "actor_id": "old", "session": "s"}
        sock.send(msgpack.packb(hello))
        answer = reply(sock)
        assert answer["type"] == "reject" and answer["rid"] == 3
        assert answer["reason"] == f"schema version differs: actor {SCHEMA_VERSION + 1} vs learner {SCHEMA_VERSION}"
    finally:
        ctx.destroy(linger=0)


def test_garbage_and_truncated_messages_are_rejected_and_the_learner_keeps_serving(learner):
    port = learner.request_port
    # raw TCP: not even a ZMTP greeting; libzmq drops the connection
    for junk in (b"\x00" * 3, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(junk)
    ctx = zmq.Context()
    try:
        sock = raw_dealer(ctx, port)
        valid_batch = [
            encode_message("batch", rid=1, actor_id="x", session="s", seq=0, n_items=1),
            packb({"id": -1, "obs": np.zeros(4, np.float32)}),
        ]
        hello = encode_message("hello", rid=0, actor_id="x", session="s", config_hash=HASH, first_seq=0)
        cases = [
            ([b"\xc1\xff garbage"], "protocol"),
            ([valid_batch[0][:-3]], "protocol"),  # truncated header
            ([hello[: len(hello) // 2]], "protocol"),
            ([b""], "protocol"),
            (valid_batch, "handshake_required"),  # batch before hello
        ]
        for frames, code in cases:
            sock.send_multipart(frames)
            answer = reply(sock)
            assert answer["type"] == "error" and answer["code"] == code, (frames, answer)
        sock.send(hello)
        assert reply(sock)["type"] == "welcome"
        object_ext = msgpack.ExtType(1, b"\x03|O8\x01" + (1).to_bytes(8, "little") + b"\0" * 8)
        bad_items = [
            ([valid_batch[0], valid_batch[1][:-2]], "protocol"),  # truncated array
            ([valid_batch[0], msgpack.packb({"obs": object_ext}, use_bin_type=True)], "protocol"),  # object dtype
            ([valid_batch[0]], "protocol"),  # frame count differs from n_items
            ([valid_batch[0], msgpack.packb([1, 2])], "protocol"),  # transition is not a map
        ]
        for frames, code in bad_items:
            sock.send_multipart(frames)
            answer = reply(sock)
            assert answer["type"] == "error" and answer["code"] == code, answer
        assert learner.drain() == []
        sock.send_multipart(valid_batch)
        answer = reply(sock)
        assert answer["type"] == "ack" and answer["status"] == "ok" and answer["acked"] == 0
    finally:
        ctx.destroy(linger=0)
    assert learner.stats()["bad_messages"] >= 8
    actor = make_actor(port, learner.weights_port)
    try:
        for i in range(20):
            actor.send(transition(i))
        assert actor.flush(5)
        assert received_ids(learner.drain()) == [-1] + list(range(20))  # the raw dealer's batch, then the actor's
    finally:
        actor.close()


def test_duplicate_and_out_of_order_batches_are_not_delivered(learner):
    ctx = zmq.Context()
    try:
        sock = raw_dealer(ctx, learner.request_port)
        sock.send(encode_message("hello", rid=0, actor_id="x", session="s", config_hash=HASH, first_seq=0))
        assert reply(sock)["acked"] == -1

        def batch(seq):
            return [encode_message("batch", rid=seq, actor_id="x", session="s", seq=seq, n_items=1), packb({"id": seq})]

        statuses = []
        for seq in (0, 0, 2, 1, 1, 2):
            sock.send_multipart(batch(seq))
            statuses.append(reply(sock)["status"])
        assert statuses == ["ok", "duplicate", "out_of_order", "ok", "duplicate", "ok"]
        assert received_ids(learner.drain()) == [0, 1, 2]
    finally:
        ctx.destroy(linger=0)


def test_four_actors_at_once_lose_nothing(learner):
    actors = [make_actor(learner.request_port, learner.weights_port, actor_id=f"a{k}") for k in range(4)]
    try:

        def stream(actor):
            for i in range(150):
                actor.send(transition(i))

        threads = [threading.Thread(target=stream, args=(a,)) for a in actors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(a.flush(15) for a in actors)
        per_actor: dict[str, list[int]] = {}
        for b in learner.drain():
            per_actor.setdefault(b.actor_id, []).extend(t["id"] for t in b.transitions)
        assert per_actor == {f"a{k}": list(range(150)) for k in range(4)}
        assert set(learner.actors()) == {"a0", "a1", "a2", "a3"}
    finally:
        for a in actors:
            a.close()


def test_weights_newest_version_wins_and_late_joiners_get_the_current_weights(learner):
    early = make_actor(learner.request_port, learner.weights_port, actor_id="early")
    try:
        assert early.wait_connected(5)
        assert early.latest_weights() is None
        time.sleep(0.2)  # let the SUB subscription reach the PUB
        seen = []
        for version in range(1, 31):
            learner.publish_weights({"layer": {"kernel": np.full((16, 16), version, np.float32)}}, version)
            w = early.latest_weights()
            if w is not None:
                seen.append(w[0])
        deadline = time.monotonic() + 5
        while (early.latest_weights() or (-1,))[0] != 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        version, params = early.latest_weights()
        assert version == 30 and float(params["layer"]["kernel"][0, 0]) == 30.0
        assert seen == sorted(seen)
        learner.publish_weights(b"opaque-blob", 29)  # older version: ignored
        time.sleep(0.2)
        assert early.latest_weights()[0] == 30
    finally:
        early.close()
    late = make_actor(learner.request_port, learner.weights_port, actor_id="late", **{"heartbeat_interval_s": 0.1})
    try:
        deadline = time.monotonic() + 5
        while late.latest_weights() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # the learner's last publish, fetched over the request socket rather than missed on PUB
        assert late.latest_weights() == (29, b"opaque-blob")
    finally:
        late.close()


def test_publish_weights_refuses_bad_input(learner):
    with pytest.raises(ValueError, match="version"):
        learner.publish_weights({"w": np.zeros(2)}, -1)
    with pytest.raises(ValueError, match=r"params\['w'\]"):
        learner.publish_weights({"w": np.array(["a"], dtype=object)}, 1)
    assert learner.weights_version == -1


def test_actor_queues_while_learner_is_absent_and_delivers_when_it_comes(caplog):
    req, pub = free_port(), free_port()
    actor = make_actor(req, pub)
    try:
        worst = 0.0
        for i in range(60):
            t0 = time.perf_counter()
            actor.send(transition(i))
            worst = max(worst, time.perf_counter() - t0)
        assert not actor.flush(0.3) and not actor.connected
        assert worst < 0.05  # send never waits for the network
        server = make_learner(req, pub)
        try:
            assert actor.flush(10)
            assert received_ids(drain_until(server, 60)) == list(range(60))
        finally:
            server.close()
    finally:
        actor.close()


def test_buffer_is_bounded_with_a_warning_dropping_the_oldest(caplog):
    req, pub = free_port(), free_port()
    one = len(packb(transition(0)))
    actor = make_actor(req, pub, max_buffer_bytes=10 * one)
    try:
        with caplog.at_level(logging.WARNING, logger="serl.transport"):
            for i in range(30):
                actor.send(transition(i))
        stats = actor.stats()
        assert stats["dropped"] == 20 and stats["unacked_bytes"] <= 10 * one
        assert any("buffer full" in r.getMessage() for r in caplog.records)
        server = make_learner(req, pub)
        try:
            assert actor.flush(10)
            assert received_ids(server.drain()) == list(range(20, 30))
        finally:
            server.close()
    finally:
        actor.close()


def test_learner_backpressure_busy_then_everything_arrives_in_order():
    server = make_learner(cfg={"max_queued_bytes": 1})
    actor = make_actor(server.request_port, server.weights_port, batch_size=4)
    try:
        for i in range(40):
            actor.send(transition(i))
        time.sleep(0.3)
        assert server.stats()["busy"] >= 1
        assert received_ids(drain_until(server, 40)) == list(range(40))
    finally:
        actor.close()
        server.close()


def test_learner_restart_with_saved_state_deduplicates_resends():
    server = make_learner()
    req, pub = server.request_port, server.weights_port
    actor = make_actor(req, pub, batch_size=5)
    kept: list[int] = []
    try:
        for i in range(50):
            actor.send(transition(i))
        assert actor.flush(5)
        kept += received_ids(server.drain())
        checkpoint = server.state_dict()  # buffer and dedup table taken together
        for i in range(50, 80):
            actor.send(transition(i))
        assert actor.flush(5)  # acked by the old learner but never checkpointed
        server.close()
        for i in range(80, 100):
            actor.send(transition(i))  # learner gone: queued
        server = make_learner(req, pub)
        server.load_state_dict(checkpoint)
        assert actor.flush(10)
        kept += received_ids(drain_until(server, 50))
        assert kept == list(range(100))
        assert actor.stats()["reconnects"] >= 1
    finally:
        actor.close()
        server.close()


def test_a_gap_beyond_the_actor_retention_is_reported_and_skipped(caplog):
    server = make_learner()
    req, pub = server.request_port, server.weights_port
    actor = make_actor(req, pub, batch_size=5, retain_bytes=1)  # keeps no acked batch
    try:
        for i in range(20):
            actor.send(transition(i))
        assert actor.flush(5)
        server.close()
        with caplog.at_level(logging.WARNING, logger="serl.transport"):
            server = make_learner(req, pub)  # fresh learner, no saved state: batches 0..3 are gone from the actor
            for i in range(20, 30):
                actor.send(transition(i))
            assert actor.flush(10)
        assert received_ids(drain_until(server, 10)) == list(range(20, 30))
        assert any("no longer holds batches 0..3" in r.getMessage() for r in caplog.records)
    finally:
        actor.close()
        server.close()


def test_state_dict_round_trips_and_load_validates():
    server = make_learner()
    try:
        state = {"format": 1, "sessions": [["a0", "s1", 4], ["a1", "s2", 0]]}
        server.load_state_dict(state)
        assert server.state_dict() == state
        for bad in ({"format": 2, "sessions": []}, {"format": 1, "sessions": [["a0", "s", "4"]]}, [1]):
            with pytest.raises(ValueError, match="transport state"):
                server.load_state_dict(bad)
    finally:
        server.close()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ActorClientConfig(batch_size=0), "batch_size"),
        (lambda: ActorClientConfig(request_port=70000), "request_port"),
        (lambda: ActorClientConfig(actor_id=""), "actor_id"),
        (lambda: ActorClientConfig(request_timeout_s=0), "request_timeout_s"),
        (lambda: LearnerServerConfig(max_queued_bytes=0), "max_queued_bytes"),
        (lambda: LearnerServerConfig(weights_port=-1), "weights_port"),
    ],
)
def test_configs_refuse_bad_values_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_old_sessions_of_an_actor_are_pruned_from_the_dedup_table():
    learner = make_learner(cfg={"actor_timeout_s": 1e-3})  # each earlier session is silent, not a live holder
    ctx = zmq.Context()
    try:
        sock = raw_dealer(ctx, learner.request_port)
        for k in range(12):
            time.sleep(0.002)  # past the actor timeout: the previous session is no live holder of the id
            sock.send(encode_message("hello", rid=k, actor_id="robot", session=f"s{k}", config_hash=HASH, first_seq=0))
            assert reply(sock)["type"] == "welcome"
        sessions = [entry[1] for entry in learner.state_dict()["sessions"]]
        assert sessions == [f"s{k}" for k in range(4, 12)]  # max_sessions_per_actor = 8, newest kept
    finally:
        ctx.destroy(linger=0)
        learner.close()


def test_actor_ignores_garbage_on_the_weights_socket_and_keeps_valid_weights(learner, caplog):
    ctx = zmq.Context()
    try:
        rogue = ctx.socket(zmq.PUB)
        rogue.setsockopt(zmq.LINGER, 0)
        port = rogue.bind_to_random_port("tcp://127.0.0.1")
        actor = make_actor(learner.request_port, port)
        try:
            assert actor.wait_connected(5)
            time.sleep(0.3)  # subscription reaches the PUB
            object_ext = msgpack.ExtType(1, b"\x03|O8\x01" + (1).to_bytes(8, "little") + b"\0" * 8)
            with caplog.at_level(logging.WARNING, logger="serl.transport"):
                for junk in (
                    b"\xc1 junk",
                    encode_message("weights", learner_id="x", version=5, params={"w": np.ones(2)})[:-3],
                    msgpack.packb({"schema_version": SCHEMA_VERSION, "type": "weights", "learner_id": "x",
                                   "version": 6, "params": {"w": object_ext}}, use_bin_type=True),
                    encode_message("weights", learner_id="x", version="7", params={}),
                ):
                    rogue.send(junk)
                    time.sleep(0.05)
                rogue.send(encode_message("weights", learner_id="x", version=3, params={"w": np.ones(2)}))
                deadline = time.monotonic() + 5
                while actor.latest_weights() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            version, params = actor.latest_weights()
            assert version == 3 and params["w"].tolist() == [1.0, 1.0]
            assert any("ignored bad weights" in r.getMessage() for r in caplog.records)
            actor.send(transition(0))
            assert actor.flush(5)  # the request side was unaffected
        finally:
            actor.close()
    finally:
        ctx.destroy(linger=0)
