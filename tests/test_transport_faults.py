"""Fault tests with real processes: SIGKILL the actor or the learner mid-stream and restart it.

The worker entry points below run in child processes started with ``python -c``.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from serl.transport import ActorClient, ActorClientConfig, LearnerServer, LearnerServerConfig, config_hash

pytestmark = pytest.mark.timeout(90)

HASH = config_hash({"test": "faults"})
FAST = dict(request_timeout_s=0.5, heartbeat_interval_s=0.2, reconnect_backoff_s=0.05, max_reconnect_backoff_s=0.2)
HERE = pathlib.Path(__file__).parent


def transition(i: int, run: int) -> dict:
    return {"run": run, "id": i, "obs": {"state": np.full(6, i, np.float32), "img": np.full((16, 16, 3), i % 251, np.uint8)}}


# ------------------------------------------------------------------ child processes


def actor_main(request_port: int, weights_port: int, run: int, count: int, rate_hz: float) -> None:
    """Stream ``count`` transitions, printing the acked count as it grows; flush and exit at the end."""
    client = ActorClient(
        ActorClientConfig(actor_id="robot", config_hash=HASH, request_port=request_port, weights_port=weights_port,
                          batch_size=4, flush_interval_s=0.01, **FAST)
    )
    last = -1
    for i in range(count):
        client.send(transition(i, run))
        acked = client.stats()["acked"]
        if acked != last:
            print(f"acked {acked}", flush=True)
            last = acked
        time.sleep(1.0 / rate_hz)
    assert client.flush(20)
    print(f"acked {client.stats()['acked']}", flush=True)
    print("done", flush=True)
    client.close()


def learner_main(request_port: int, weights_port: int, checkpoint: str) -> None:
    """Receive into a list 'buffer' and checkpoint buffer + dedup table together every 0.2 s (atomic rename)."""
    path = pathlib.Path(checkpoint)
    buffer: list[list[int]] = []
    server = LearnerServer(LearnerServerConfig(request_port=request_port, weights_port=weights_port, config_hash=HASH))
    if path.exists():
        saved = json.loads(path.read_text())
        buffer = saved["buffer"]
        server.load_state_dict(saved["transport"])
    server.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    last_save = time.monotonic()
    while True:
        for batch in server.drain(timeout=0.02):
            buffer.extend([t["run"], t["id"]] for t in batch.transitions)
        if stop or time.monotonic() - last_save > 0.2:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"buffer": buffer, "transport": server.state_dict()}))
            os.replace(tmp, path)
            last_save = time.monotonic()
            if stop:
                break
    server.close()


def spawn(call: str) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_transport_faults as t; t.{call}"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen, predicate, timeout: float) -> str:
    result, done = [], threading.Event()

    def reader():
        for line in proc.stdout:
            if predicate(line.strip()):
                result.append(line.strip())
                done.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), "child did not report in time"
    return result[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ tests


def test_actor_killed_mid_stream_and_restarted_loses_and_duplicates_nothing_acked():
    received: list[tuple[str, int, int]] = []
    server = LearnerServer(
        LearnerServerConfig(request_port=0, weights_port=0, config_hash=HASH),
        on_batch=lambda b: received.extend((b.session, t["run"], t["id"]) for t in b.transitions),
    ).start()
    try:
        first = spawn(f"actor_main({server.request_port}, {server.weights_port}, run=0, count=100000, rate_hz=400)")
        line = read_until(first, lambda s: s.startswith("acked") and int(s.split()[1]) >= 150, timeout=30)
        time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        acked_before_kill = int(line.split()[1])
        second = spawn(f"actor_main({server.request_port}, {server.weights_port}, run=1, count=120, rate_hz=1000)")
        read_until(second, lambda s: s == "done", timeout=30)
        second.wait(10)
        assert second.returncode == 0
    finally:
        server.close()
    runs = {run: [i for (_, r, i) in received if r == run] for run in (0, 1)}
    assert len({s for (s, r, _) in received if r == 0}) == 1 and len({s for (s, r, _) in received if r == 1}) == 1
    # the killed session: a gap-free prefix holding at least everything it saw acked, nothing twice
    assert runs[0] == list(range(len(runs[0]))) and len(runs[0]) >= acked_before_kill
    assert runs[1] == list(range(120))  # the restarted session (a new session id) delivers everything
    assert server.stats().get("duplicate_batches", 0) == 0


def test_learner_killed_and_restarted_from_its_checkpoint_actor_keeps_going_without_duplicates(tmp_path):
    req, pub = free_port(), free_port()
    checkpoint = tmp_path / "learner.json"
    learner = spawn(f"learner_main({req}, {pub}, {str(checkpoint)!r})")
    read_until(learner, lambda s: s == "ready", timeout=20)
    actor = ActorClient(
        ActorClientConfig(actor_id="robot", config_hash=HASH, request_port=req, weights_port=pub,
                          batch_size=4, flush_interval_s=0.01, **FAST)
    )
    total, worst_send = 600, 0.0
    try:
        for i in range(total):
            if i == 200:  # mid-stream: batches acked since the last checkpoint must come again, once
                learner.send_signal(signal.SIGKILL)
                learner.wait(5)
            if i == 400:
                assert not actor.connected  # we streamed through the outage
                learner = spawn(f"learner_main({req}, {pub}, {str(checkpoint)!r})")
                read_until(learner, lambda s: s == "ready", timeout=20)
            t0 = time.perf_counter()
            actor.send(transition(i, run=0))
            worst_send = max(worst_send, time.perf_counter() - t0)
            time.sleep(0.006 if 200 <= i < 400 else 0.002)  # an outage of about 1.2 s, over twice the timeout
        assert actor.flush(20)
        stats = actor.stats()
        assert stats["reconnects"] >= 1
        print("batches resent after the learner restart:", stats["resent_after_learner_restart"])
        learner.send_signal(signal.SIGTERM)
        learner.wait(10)
    finally:
        actor.close()
        if learner.poll() is None:
            learner.kill()
    saved = json.loads(checkpoint.read_text())
    ids = [i for _, i in saved["buffer"]]
    assert ids == list(range(total))  # nothing lost, nothing twice, in order
    assert worst_send < 0.1
