"""Transport security on real sockets: CURVE keys, refusing keyless binds beyond loopback, `serl keys`, and
handshake refusals that name the config fields that differ."""

import dataclasses
import logging
import shutil
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from serl.agents.sac import SACConfig
from serl.cli.main import main
from serl.runtime.config import EnvConfig, run_config_digests, run_config_hash
from serl.transport import ActorClient, ActorClientConfig, HandshakeRejected, LearnerServer, LearnerServerConfig
from serl.transport.security import ActorKeys, InsecureBindError, check_bind, generate_keys, is_loopback

pytestmark = pytest.mark.timeout(120)

ENV, AGENT = EnvConfig(), SACConfig()
HASH = run_config_hash(ENV, AGENT)
FAST = dict(request_timeout_s=1.0, heartbeat_interval_s=0.3, reconnect_backoff_s=0.05, max_reconnect_backoff_s=0.3)


def own_address() -> str:
    """A non-loopback address of this machine, or 0.0.0.0 when it has none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return "0.0.0.0"
    return "0.0.0.0" if is_loopback(address) else address


def learner(host="0.0.0.0", **kw) -> LearnerServer:
    cfg = LearnerServerConfig(host=host, request_port=0, weights_port=0, config_hash=HASH, **kw)
    return LearnerServer(cfg).start()


def actor(server: LearnerServer, actor_id="a0", host="127.0.0.1", **kw) -> ActorClient:
    cfg = {**FAST, "batch_size": 8, "flush_interval_s": 0.01, "config_hash": HASH, **kw}
    return ActorClient(ActorClientConfig(
        actor_id=actor_id, host=host, request_port=server.request_port, weights_port=server.weights_port, **cfg,
    ))


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def drain_until(server, count, timeout=30.0) -> list[int]:
    ids, deadline = [], time.monotonic() + timeout
    while len(ids) < count and time.monotonic() < deadline:
        ids += [t["id"] for b in server.drain(timeout=0.05) for t in b.transitions]
    return ids


@pytest.fixture
def keys(tmp_path):
    """Keys of a learner that authorises "good"; "stranger" has a pair of its own but knows the learner's key."""
    generate_keys(tmp_path / "keys", ["good"])
    generate_keys(tmp_path / "other", ["stranger"])
    shutil.copyfile(tmp_path / "keys/learner/learner.key", tmp_path / "other/stranger/learner.key")
    return tmp_path


def test_an_authorised_actor_streams_and_gets_weights_over_a_non_loopback_bind(keys):
    host = own_address()
    server = learner(host=host, keys=keys / "keys/learner")
    client = actor(server, host="127.0.0.1" if host == "0.0.0.0" else host, keys=keys / "keys/good")
    try:
        assert client.wait_connected(30)
        for i in range(40):
            client.send({"id": i, "obs": np.full(4, i, np.float32)})
        assert client.flush(30)
        assert drain_until(server, 40) == list(range(40))
        server.publish_weights({"w": np.arange(3, dtype=np.float32)}, version=1)
        version, params = wait_for(client.latest_weights, what="weights")
        assert version == 1 and params["w"].tolist() == [0.0, 1.0, 2.0]
    finally:
        client.close()
        server.close()


def curve_sub(ctx, port, actor_dir):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    ActorKeys.load(actor_dir).secure(sub)
    sub.connect(f"tcp://127.0.0.1:{port}")
    return sub


def test_an_unknown_key_gets_nothing_through_and_no_weights(keys):
    server = learner(keys=keys / "keys/learner")
    stranger = actor(server, actor_id="stranger", keys=keys / "other/stranger")
    ctx = zmq.Context()
    try:
        with pytest.raises(HandshakeRejected, match="refused actor 'stranger''s key"):
            stranger.wait_connected(30)
        # a keyless peer is turned away as well: its hello never reaches the learner
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(f"tcp://127.0.0.1:{server.request_port}")
        plain.send(b"\x80")
        good_sub = curve_sub(ctx, server.weights_port, keys / "keys/good")
        bad_sub = curve_sub(ctx, server.weights_port, keys / "other/stranger")
        received = {"good": 0, "bad": 0}

        def publish_and_count():
            server.publish_weights(b"policy", version=1)
            for name, sock in (("good", good_sub), ("bad", bad_sub)):
                while sock.poll(0):
                    sock.recv()
                    received[name] += 1
            return received["good"] >= 5

        wait_for(publish_and_count, what="weights at the authorised subscriber")
        assert received["bad"] == 0
        assert plain.poll(0) == 0
        stats = server.stats()
        assert stats.get("handshakes", 0) == 0 and stats.get("bad_messages", 0) == 0
        assert server.actors() == {} and server.drain() == []
    finally:
        stranger.close()
        ctx.destroy(linger=0)
        server.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "*", own_address()])
def test_a_keyless_bind_beyond_loopback_is_refused_naming_the_fix(host):
    with pytest.raises(InsecureBindError, match=r"not loopback.*serl keys .*--net.keys.*--net.insecure"):
        LearnerServer(LearnerServerConfig(host=host, request_port=0, weights_port=0))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "::1"])
def test_loopback_needs_no_keys(host):
    assert is_loopback(host)
    check_bind(host, None, insecure=False)


def test_the_insecure_override_warns_and_works(caplog):
    with caplog.at_level(logging.WARNING, logger="serl.transport"):
        server = learner(insecure=True)
    assert "WITHOUT encryption or authentication" in caplog.text
    client = actor(server)
    try:
        client.send({"id": 0})
        assert client.flush(30) and drain_until(server, 1) == [0]
    finally:
        client.close()
        server.close()


def test_missing_keys_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="serl keys"):
        LearnerServer(LearnerServerConfig(host="0.0.0.0", request_port=0, weights_port=0, keys=tmp_path))
    with pytest.raises(FileNotFoundError, match="serl keys"):
        ActorClient(ActorClientConfig(keys=tmp_path))


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serl_keys_makes_a_folder_per_machine_with_private_secrets(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k"), "--actors", "robot-1", "robot-2"]) == 0
    assert "--net.keys" in capsys.readouterr().out
    k = tmp_path / "k"
    assert sorted(p.name for p in (k / "learner").iterdir()) == ["authorized", "learner.key", "learner.key_secret"]
    assert sorted(p.name for p in (k / "learner/authorized").iterdir()) == ["robot-1.key", "robot-2.key"]
    for name in ("robot-1", "robot-2"):
        assert sorted(p.name for p in (k / name).iterdir()) == ["actor.key", "actor.key_secret", "learner.key"]
        assert mode(k / name / "actor.key_secret") == 0o600 and mode(k / name) == 0o700
        assert (k / name / "actor.key").read_bytes() == (k / "learner/authorized" / f"{name}.key").read_bytes()
        assert (k / name / "learner.key").read_bytes() == (k / "learner/learner.key").read_bytes()
    assert mode(k / "learner/learner.key_secret") == 0o600 and mode(k / "learner") == 0o700
    learner_secret = (k / "learner/learner.key_secret").read_bytes()
    assert main(["keys", str(k), "--actors", "robot-3"]) == 0  # adds an actor, keeps the learner's pair
    assert (k / "learner/learner.key_secret").read_bytes() == learner_secret
    assert (k / "learner/authorized/robot-3.key").is_file()
    assert main(["keys", str(k), "--actors", "robot-1"]) == 2
    assert capsys.readouterr().err.strip().endswith("robot-1 exists already; pick another actor name or remove it")


def test_a_config_refusal_names_the_fields_that_differ():
    server = learner(host="127.0.0.1", config_digests=run_config_digests(ENV, AGENT))
    env = dataclasses.replace(ENV, overrides=("max_episode_steps=50",))
    agent = dataclasses.replace(AGENT, utd_ratio=AGENT.utd_ratio + 1)
    client = actor(server, config_hash=run_config_hash(env, agent), config_digests=run_config_digests(env, agent))
    try:
        with pytest.raises(HandshakeRejected) as err:
            client.wait_connected(30)
        assert str(err.value) == (
            "learner refused actor 'a0': config differs from the learner's in: agent.utd_ratio, env.max_episode_steps"
        )
        assert isinstance(err.value, ValueError)  # so the serl command reports it as one line
    finally:
        client.close()
        server.close()


def test_run_config_digests_cover_what_the_hash_covers():
    digests = run_config_digests(ENV, AGENT)
    assert {"env.task", "env.pixels", "agent.utd_ratio", "agent.hidden_dims"} <= digests.keys()
    other = run_config_digests(dataclasses.replace(ENV, task="PandaPegInsertion"), AGENT)
    assert [k for k in digests if digests[k] != other.get(k)] == ["env.task"]


def test_serl_actor_refused_by_the_learner_exits_with_one_line(tmp_path):
    server = learner(host="127.0.0.1", config_digests=run_config_digests(ENV, AGENT))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "serl.cli.main", "actor", "--env.task", ENV.task, "--agent.utd-ratio",
             str(AGENT.utd_ratio + 1), "--net.port", str(server.request_port), "--net.weights-port",
             str(server.weights_port), "--run.root", str(tmp_path), "--weights-timeout", "60", "--quiet"],
            capture_output=True, text=True, timeout=110, cwd=tmp_path,
        )
    finally:
        server.close()
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert last.startswith("serl actor: learner refused actor ") and last.endswith(
        "config differs from the learner's in: agent.utd_ratio"), result.stderr


def test_config_digests_are_optional_on_the_wire_and_checked_when_present():
    from serl.transport.schema import ProtocolError, decode_message, encode_message

    hello = dict(rid=1, actor_id="a", session="s", config_hash=HASH, first_seq=0)
    assert "config_digests" not in decode_message(encode_message("hello", **hello))  # an older actor
    assert decode_message(encode_message("hello", **hello, config_digests={"env.task": "ab"}))["config_digests"]
    for bad in ([1, 2], {"env.task": 3}, {f"k{i}": "v" for i in range(1000)}, {"x" * 500: "v"}):
        with pytest.raises(ProtocolError, match="config_digests"):
            decode_message(encode_message("hello", **hello, config_digests=bad))
