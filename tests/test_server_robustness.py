"""The robot server under abuse, on loopback with the real twin: long commands do not block other
requests, oversized bodies and idle or trickling connections are cut off, zero damping is refused,
and joint resets that leave the safety box never latch a false stop."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from backend_episode import wait_for  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.pose import DOWN_QUAT as DOWN  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.franka import HOME_Q  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.http.serl_api import serl_api  # noqa: E402
from robot_servers.limits import MAX_BODY_BYTES  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402

INSIDE = [0.45, 0.0, 0.25, *DOWN]
LOW_BOX = SafetyBox(position_low=(0.3, -0.2, 0.05), position_high=(0.7, 0.2, 0.35), center_quat=tuple(DOWN))


@pytest.fixture
def real_time():
    """A real-time twin (physics and monitor threads running) behind a server with the SERL routes."""
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    server = ServerThread(create_app(backend, {}, ServerConfig(safety_box=LOW_BOX), (serl_api(),))).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    yield backend, server, client
    client.close()
    server.stop()
    backend.close()


def _in_background(fn):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    return thread, result


def test_state_is_served_while_a_joint_reset_runs_and_other_commands_are_refused(real_time):
    _, server, client = real_time
    reset, result = _in_background(lambda: httpx.post(server.url + "/joint_reset", json={"duration": 3.0}, timeout=30))
    assert wait_for(lambda: client.get("/health").json()["joint_reset_running"], 10.0, period=0.01)
    latencies, refusals = [], []
    while reset.is_alive():
        start = time.perf_counter()
        assert client.get("/state").status_code == 200
        latencies.append(time.perf_counter() - start)
        refusals.append(client.post("/target", json={"pose": INSIDE}))
    reset.join()
    assert result["value"].status_code == 200, result["value"].text
    busy = [r for r in refusals if r.status_code == 409]
    assert busy and busy[0].json()["error"] == "ArmBusy" and "joint reset" in busy[0].json()["detail"]
    assert {r.status_code for r in refusals} <= {409, 200}  # 200 only for a target sent after the reset ended
    print(f"/state during a 3 s joint reset: n={len(latencies)}, p50={statistics.median(latencies) * 1e3:.1f} ms, "
          f"max={max(latencies) * 1e3:.1f} ms")
    assert len(latencies) >= 10
    assert statistics.median(latencies) < 0.1 and max(latencies) < 0.5, latencies
    assert not client.get("/health").json()["joint_reset_running"]
    assert client.post("/target", json={"pose": INSIDE}).status_code == 200


def test_serl_joint_reset_does_not_block_state_reads(real_time):
    _, server, client = real_time
    reset, result = _in_background(lambda: httpx.post(server.url + "/serl/jointreset", timeout=30))
    assert wait_for(lambda: client.get("/health").json()["joint_reset_running"], 10.0, period=0.01)
    start = time.perf_counter()
    assert client.post("/serl/getstate").status_code == 200
    assert time.perf_counter() - start < 0.5 and reset.is_alive()
    assert client.post("/serl/pose", json={"arr": INSIDE}).status_code == 409
    reset.join()
    assert result["value"].status_code == 200 and result["value"].text == "Reset Joint"


class HeldImpedanceTwin(TwinBackend):
    """The real-time twin, with an impedance change that takes as long as the test says (a ROS 2
    parameter call can take a while): the guard's lock stays held meanwhile."""

    def __init__(self, config: TwinConfig):
        self.entered, self.release = threading.Event(), threading.Event()
        super().__init__(config)

    def set_impedance(self, params):
        self.entered.set()
        self.release.wait(30.0)
        super().set_impedance(params)


def test_a_slow_command_holding_the_guard_does_not_stall_the_event_loop():
    backend = HeldImpedanceTwin(TwinConfig(scene="empty", lockstep=False, cameras=()))
    try:
        with ServerThread(create_app(backend, {}, ServerConfig(safety_box=LOW_BOX))) as server, \
                httpx.Client(base_url=server.url, timeout=30) as client, \
                httpx.Client(base_url=server.url, timeout=30) as probe:
            slow, result = _in_background(lambda: httpx.post(server.url + "/impedance", json={}, timeout=30))
            assert backend.entered.wait(10.0)
            state, _ = _in_background(lambda: client.get("/state"))  # waits for the lock, in the threadpool
            latencies = []
            for _ in range(10):
                start = time.perf_counter()
                assert probe.get("/health").status_code == 200
                latencies.append(time.perf_counter() - start)
            assert statistics.median(latencies) < 0.1 and max(latencies) < 0.5, latencies
            assert slow.is_alive()
            backend.release.set()
            slow.join()
            state.join()
            assert result["value"].status_code == 200
    finally:
        backend.release.set()
        backend.close()


def test_joint_resets_from_inside_the_box_to_home_outside_it_never_stop_the_arm(real_time):
    """Home lies above this box, so every joint reset ends outside it; the monitor must not call that a stop."""
    backend, _, client = real_time
    assert not LOW_BOX.contains(np.asarray(backend.state().tcp_pose), tolerance=0.01)
    for _ in range(4):
        assert wait_for(lambda: client.post("/target", json={"pose": INSIDE}).status_code == 200
                        and client.get("/health").json()["safety"]["armed"], 20.0, period=0.02)
        response = client.post("/joint_reset", json={"q": list(HOME_Q), "duration": 0.5})
        assert response.status_code == 200, response.text
        assert not LOW_BOX.contains(np.asarray(response.json()["state"]["tcp_pose"]), tolerance=0.01)
        # the monitor looks at 100 Hz: watch it look at the home pose for a while
        watched = time.monotonic() + 0.3
        while time.monotonic() < watched:
            assert not client.get("/health").json()["safety"]["stopped"]
    health = client.get("/health").json()
    assert not health["safety"]["stopped"] and health["safety"]["stops"] == 0, health
    assert client.post("/target", json={"pose": INSIDE}).status_code == 200


@pytest.fixture(scope="module")
def lockstep_server():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))
    server = ServerThread(create_app(backend, {}, ServerConfig()), timeout_keep_alive=0.5, timeout_request=0.5).start()
    yield backend, server
    server.stop()
    backend.close()


def _send_until_answered(sock: socket.socket, head: bytes, chunk: bytes, limit_s: float = 10.0) -> tuple[bytes, int]:
    """Send ``head``, then ``chunk`` after chunk until the server answers (or closes); returns the answer
    and how many body bytes went out."""
    sock.sendall(head)
    sock.setblocking(False)
    answer, sent, deadline = b"", 0, time.monotonic() + limit_s
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 1.0)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            answer += data
            if not data or b"\r\n\r\n" in answer:
                break
        elif writable and sent >= 0:
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                sent = -sent - 1  # closed by the server: stop sending, read what it said
    return answer, abs(sent)


def test_a_100_mb_body_is_refused_with_413_at_once_and_the_server_keeps_serving(lockstep_server):
    backend, server = lockstep_server
    before = backend.state().target_pose.copy()
    start = time.perf_counter()
    with socket.create_connection((server.host, server.port)) as sock:
        head = (b"POST /target HTTP/1.1\r\nHost: robot\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n")
        answer, sent = _send_until_answered(sock, head, b" " * 65536)
    elapsed = time.perf_counter() - start
    print(f"413 for a declared 100 MB body after {elapsed * 1e3:.1f} ms, {sent} bytes sent")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower() and str(MAX_BODY_BYTES).encode() in answer
    assert elapsed < 2.0 and sent < 20 * MAX_BODY_BYTES
    np.testing.assert_array_equal(backend.state().target_pose, before)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_a_chunked_body_is_counted_as_it_streams(lockstep_server):
    backend, server = lockstep_server
    before = backend.state().target_pose.copy()
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    with socket.create_connection((server.host, server.port)) as sock:
        head = b"POST /target HTTP/1.1\r\nHost: robot\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, sent = _send_until_answered(sock, head, chunk)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20 * MAX_BODY_BYTES
    np.testing.assert_array_equal(backend.state().target_pose, before)

    def chunks():  # a small chunked command still reaches the route whole
        yield b'{"pose": [0.4, 0.0, 0.3, '
        yield b'1.0, 0.0, 0.0, 0.0]}'

    response = httpx.post(server.url + "/target", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["target"] == [0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]


def _seconds_until_closed(sock: socket.socket, trickle: bytes = b"", period: float = 0.05, limit_s: float = 10.0) -> float:
    """Time until the server closes ``sock``, sending ``trickle`` a byte per ``period`` meanwhile."""
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < limit_s:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        readable, _, _ = select.select([sock], [], [], period)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    break
            except ConnectionResetError:
                break
    return time.perf_counter() - start


SLOW = {
    "idle": b"",
    "slowloris head": b"GET /health HTTP/1.1\r\nHost: robot\r\nX-Padding: " + b"a" * 1000,
    "slow body": b"POST /target HTTP/1.1\r\nHost: robot\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                 + b" " * 499,
}


@pytest.mark.parametrize("kind", list(SLOW))
def test_idle_and_trickling_connections_are_closed_after_their_timeout(lockstep_server, kind):
    _, server = lockstep_server
    with socket.create_connection((server.host, server.port)) as sock:
        seconds = _seconds_until_closed(sock, SLOW[kind])
    print(f"{kind}: closed after {seconds:.2f} s (timeout 0.5 s)")
    assert 0.4 < seconds < 0.5 + 2.0
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_a_kept_alive_connection_is_closed_once_idle(lockstep_server):
    _, server = lockstep_server
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: robot\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        seconds = _seconds_until_closed(sock)  # reads the rest of the answer, then waits for the close
    assert seconds < 0.5 + 2.0


def test_zero_or_negative_damping_is_refused_naming_the_field(real_time):
    backend, _, client = real_time
    before = backend.impedance()
    for body, field in (({"translational_damping": [0.0, 50.0, 50.0]}, "translational_damping"),
                        ({"rotational_damping": [5.0, -1.0, 5.0]}, "rotational_damping")):
        response = client.post("/impedance", json=body)
        assert response.status_code == 422 and field in response.json()["message"], response.text
    for key in ("translational_damping", "rotational_damping"):
        for value, words in ((0.0, "damping must be > 0"), (-5.0, "must lie in")):
            response = client.post("/serl/update_param", json={key: value})
            assert response.status_code == 422, response.text
            error = response.json()["detail"][0]
            assert error["loc"] == ["body", key] and words in error["msg"], response.text
    assert backend.impedance() is before  # nothing changed
    assert client.post("/serl/update_param", json={"translational_damping": 60.0}).status_code == 200
    assert client.post("/impedance", json={"translational_damping": [60.0, 60.0, 60.0]}).status_code == 200


def test_the_stop_button_latches_like_the_pose_check_until_recover(lockstep_server):
    backend, server = lockstep_server
    with httpx.Client(base_url=server.url, timeout=10) as client:
        pose = client.get("/state").json()["tcp_pose"]
        assert client.post("/safety_stop", json={"reason": "a person pressed stop"}).status_code == 200
        health = client.get("/health").json()
        assert "a person pressed stop" in str(health), health
        before = backend.state().target_pose.copy()
        refused = client.post("/target", json={"pose": [pose[0] + 0.01, *pose[1:]]})
        assert refused.status_code == 409 and "safety stop" in refused.text
        np.testing.assert_array_equal(backend.state().target_pose, before)
        assert client.post("/recover").status_code == 200
        assert client.post("/target", json={"pose": pose}).status_code == 200
